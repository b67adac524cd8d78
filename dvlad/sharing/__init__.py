"""One read-only base model shared by the LoRA jobs that fine-tune it on a device (docs/memory.md)."""
