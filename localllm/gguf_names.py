"""GGUF naming rules in one place: the parts of a split file, and the quantization a file name
carries. Names come from repos, folders and users; nothing here touches the disk."""

from __future__ import annotations

import re
from pathlib import Path, PurePath, PurePosixPath

SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
# Quality order of common GGUF quantizations, best first.
QUANT_ORDER = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
               "IQ4_XS", "IQ4_NL", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_XXS", "Q2_K", "IQ2_M")
_QUANT_IN_NAME = r"(?:^|[-_.]){quant}(?:[-_.]|$)"


def split_files(path: Path) -> list[Path]:
    """All parts of a split GGUF (name-00001-of-00003.gguf ...), or just the file."""
    match = SPLIT_RE.search(path.name)
    if not match:
        return [path]
    count = int(match.group(2))
    stem = path.name[: match.start()]
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def split_parts(name: str) -> list[str]:
    """The repo-relative names of every part of the split file `name` (or just `name`)."""
    folder = PurePosixPath(name).parent
    return [(folder / part.name).as_posix() if str(folder) != "." else part.name for part in split_files(Path(name))]


def is_later_part(name: str) -> bool:
    """A part after the first of a split file: listed and loaded through the first."""
    match = SPLIT_RE.search(name)
    return bool(match) and int(match.group(1)) > 1


def quant_of(name: str) -> str | None:
    """The quantization a file name announces (e.g. Q4_K_M in model-Q4_K_M.gguf), if any."""
    stem = Path(name).name.upper()
    return next((q for q in QUANT_ORDER if re.search(_QUANT_IN_NAME.format(quant=q), stem)), None)


def files_for_quant(names, quant: str) -> list[str]:
    """The file(s) of one quantization among a repo's GGUFs (several when split), sorted."""
    pattern = re.compile(_QUANT_IN_NAME.format(quant=re.escape(quant)), re.IGNORECASE)
    return sorted(n for n in names if pattern.search(Path(n).stem) and not Path(n).name.startswith("mmproj"))


def is_projector(path: PurePath) -> bool:
    """A vision model's projector, by the name every converter gives it (llama.cpp's, LM Studio's)."""
    return path.suffix.lower() == ".gguf" and "mmproj" in path.name.lower()
