"""The core: the pipe of on-policy distillation, for any Hugging Face causal LM and tokenizer.

    prompts ─► sampler ─► Rollouts ─► teacher.score ─► TeacherScores ─► loss ─► gradient

Modules, in import order (each imports only those above it)::

    tensor_ops   mask checks, masked reductions, compute dtype, floored log-softmax, token log-probs
    kernels      per-chunk divergence values and analytic gradients
    chunked      row-chunked autograd over a kernel (O(chunk·V) extra memory)
    divergences  the math of every divergence and the DIVERGENCES registry; k1/k2/k3 estimators
    fused        fused LM head + divergence (no (B, T, V) logits)
    rollouts     the Rollouts batch, padding, prompt rendering
    forward      completion logits / hidden states, LM-head access, model unwrapping
    sampler      sample(), SamplerBackend, BACKENDS
    teacher      the Teacher protocol, TeacherScores, TeacherScorer (the local teacher)
    loss         distillation_loss (full estimator), sampled_token_loss (sampled estimator)

The core imports nothing from the rest of odistill (training loop, lab bench, classroom, CLI);
``tests/test_architecture.py`` enforces it. Importing this package imports none of its modules.
"""
