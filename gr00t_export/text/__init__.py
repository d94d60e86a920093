"""Text handling shared by the model families: the Qwen2 byte-level BPE with Eagle's added tokens (`qwen2`) and
the machinery of the TorchScript tokenizer stages (`tokenizer_script`). Each family adds its own prompt."""
