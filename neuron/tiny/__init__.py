"""`cortex tiny-model`: small random-weight Llama models with a real tokenizer and chat template."""
