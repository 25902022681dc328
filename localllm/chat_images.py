"""A chat's images, decoded once and counted once.

Before each reply a chat finds which turns fit the window by counting suffixes of its history,
several counts per send, and each reply sends every image still in its context. A phone's photo
takes 0.25 s to decode: the chat keeps its images decoded (within PICTURE_BYTES), and counts each
as a small stand-in plus what that image adds beyond it, measured once. That sum is exact: mtmd
tokenizes an image (its tiles and their separators) apart from the text around it
(tests/test_vision_chat.py checks it against the count with every image decoded).
"""

from __future__ import annotations

from pathlib import Path

from . import images
from .images import Picture

PICTURE_BYTES = 256 << 20  # decoded images kept for the next replies: seven 12-megapixel photos
STAND_IN = Picture(32, 32, b"\x80" * 32 * 32 * 3, "0" * 64)  # small and grey


class ChatImages:
    """The images of one chat with one model (files in its store's image folder, by name)."""

    def __init__(self, folder: Path, model):
        self.folder, self.model = folder, model
        self._pictures: dict[str, Picture] = {}
        self._beyond: dict[str, int] = {}  # image -> tokens beyond the stand-in's

    def picture(self, name: str) -> Picture:
        """A kept image, decoded; kept decoded while PICTURE_BYTES allow. A full store takes no more
        (each reply reads its images in the same order: evicting the oldest would miss every one)."""
        picture = self._pictures.get(name)
        if picture is None:
            picture = images.from_file(str(self.folder / name))
            if sum(len(p.rgb) for p in self._pictures.values()) + len(picture.rgb) <= PICTURE_BYTES:
                self._pictures[name] = picture
        return picture

    def keep_only(self, names) -> None:
        """Forget the decoded images no longer in the context (their turns left the window)."""
        for name in set(self._pictures) - set(names):
            del self._pictures[name]

    def beyond_stand_in(self, name: str) -> int:
        """What an image adds to a prompt beyond the stand-in (negative where it is fewer tokens)."""
        if name not in self._beyond:
            tokenize, marker = self.model.tokenize_images, self.model.image_marker
            self._beyond[name] = len(tokenize(marker, [self.picture(name)])) - len(tokenize(marker, [STAND_IN]))
        return self._beyond[name]
