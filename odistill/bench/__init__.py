"""The lab bench: synthetic verifiable tasks, a character tokenizer, tiny Hugging Face models with shipped
checkpoints, supervised fine-tuning, evaluation, and ready-made experiments. The notebooks run on it.

It builds on the core and the training loop, and the core never imports it: everything the core does
works on any Hugging Face model, and the bench is just a very small one.
"""
