"""The model catalog shipped with localllm (catalog.json), read by localllm.catalog."""
