"""The checkpoint converter (bf16/fp16 -> LightX2V fp8/int8 files), above the model packages it reads through."""
