"""The ``"vllm"`` sampling backend: the student samples with a vLLM engine in the same process (colocated).

On a GPU, vLLM's paged attention and continuous batching sample long completions several times faster
than a Hugging Face decode loop. The engine holds its own copy of the student's weights, so after every
optimizer step the new weights must reach it before the next sample: the training loop calls
:meth:`VLLMBackend.weights_changed`, and the next :meth:`~VLLMBackend.generate` loads the student's
current ``state_dict`` into the engine (``load_weights`` on the engine's model) before it samples.

The importance-sampling loss needs log q(x_t) under the distribution each token was *drawn from*
(after temperature, top-k and top-p). vLLM returns the raw model's log-probs unless the engine is
built with ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2); this backend asks for it, and with
an older vLLM it refuses to sample with a temperature other than 1 or any top-k / top-p, where raw
and processed log-probs differ.

Install: ``pip install "odistill[vllm]"`` on a machine with a CUDA GPU. Use:
``DistillConfig(sampler_backend="vllm")`` (``--sampler-backend vllm``). Not with FSDP (the engine needs
the full weights in every process) nor LoRA students (it would need the merged weights); data
parallelism works: every process builds its own engine on its own GPU.
"""

from __future__ import annotations

import os
import tempfile

import torch

__all__ = ["VLLMBackend", "VLLMUnavailableError", "check_vllm_available", "completions_from_outputs"]

#: The share of the GPU's memory the engine may take (weights and KV cache), when not given.
MEMORY_ENV = "ODISTILL_VLLM_GPU_MEMORY"


class VLLMUnavailableError(RuntimeError):
    """vLLM cannot sample here (not installed, no GPU, or a setting it cannot honour)."""


def check_vllm_available() -> None:
    """Raise :class:`VLLMUnavailableError` with what to do when vLLM cannot run here."""
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise VLLMUnavailableError(
            "sampler_backend='vllm' needs the vllm package, which is not installed here "
            f"({error}): pip install 'odistill[vllm]' on a machine with a CUDA GPU, or use "
            "sampler_backend='hf'"
        ) from None
    if not torch.cuda.is_available():
        raise VLLMUnavailableError(
            "sampler_backend='vllm' samples on a CUDA GPU, and torch sees none here: use sampler_backend='hf'"
        )


class VLLMBackend:
    """A :class:`~odistill.core.sampler.SamplerBackend` that samples with a colocated vLLM engine.

    The engine is built on the first call, from the student saved to a temporary folder (so any
    student works, a hub model or one built from a config), with ``gpu_memory_utilization`` of the
    GPU for its weights and KV cache (default 0.3, or the ``ODISTILL_VLLM_GPU_MEMORY`` environment
    variable); the rest stays with training. Each row is sampled with its own seed (the call's seed
    plus the row index), so a seeded call is reproducible.
    """

    takes_seed = True  # vLLM's sampler does not read torch's RNG: the seed is passed to every request

    def __init__(self, gpu_memory_utilization: float | None = None, dtype: str = "auto"):
        if gpu_memory_utilization is None:
            gpu_memory_utilization = float(os.environ.get(MEMORY_ENV, "0.3"))
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.llm = None
        self._model_id = None  # id() of the student the engine was built from
        self._stale = False
        self._processed_logprobs = False
        self._folder = None

    # -- the engine --------------------------------------------------------------------------------
    def _engine(self, model):
        if self.llm is not None and self._model_id == id(model):
            return self.llm
        check_vllm_available()
        import vllm

        self._folder = tempfile.TemporaryDirectory(prefix="odistill-vllm-")
        model.save_pretrained(self._folder.name)
        options = dict(
            model=self._folder.name,
            skip_tokenizer_init=True,  # prompts go in as token ids; completions come back as ids
            gpu_memory_utilization=self.gpu_memory_utilization,
            dtype=self.dtype,
            enable_prefix_caching=False,  # the weights change every step: cached prefixes would be stale
        )
        try:
            self.llm = vllm.LLM(**options, logprobs_mode="processed_logprobs")
            self._processed_logprobs = True
        except TypeError:  # vLLM < 0.10.2: log-probs of the raw model only
            self.llm = vllm.LLM(**options)
            self._processed_logprobs = False
        self._model_id, self._stale = id(model), False
        return self.llm

    def weights_changed(self, model) -> None:
        """The student was updated: load its weights into the engine before the next sample."""
        self._stale = True

    def _sync(self, model) -> None:
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        llm = self.llm
        if callable(getattr(llm, "apply_model", None)):  # vLLM >= 0.9
            llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        else:  # the in-process engine of older releases
            engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
            engine_model.load_weights(weights)
        if callable(getattr(llm, "reset_prefix_cache", None)):
            llm.reset_prefix_cache()
        self._stale = False

    # -- SamplerBackend ----------------------------------------------------------------------------
    def generate(
        self,
        model,
        prompt_ids,
        prompt_attention_mask,
        *,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        pad_id,
        eos_ids,
        seed=None,
    ):
        from vllm import SamplingParams

        llm = self._engine(model)
        if self._stale:
            self._sync(model)
        warped = temperature not in (0.0, 1.0) or top_p < 1.0 or top_k > 0
        if warped and not self._processed_logprobs:
            raise VLLMUnavailableError(
                "this vLLM returns the raw model's log-probs, not those of the distribution it samples from "
                f"(temperature {temperature}, top_k {top_k}, top_p {top_p}): the importance ratio would be "
                "wrong. Upgrade to vLLM >= 0.10.2 (logprobs_mode='processed_logprobs'), or sample at "
                "temperature 1 without top-k / top-p"
            )
        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()}
            for ids, mask in zip(prompt_ids, prompt_attention_mask, strict=True)
        ]
        base_seed = 0 if seed is None else int(seed)
        params = [
            SamplingParams(
                n=1,
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=int(top_k) if top_k > 0 else -1,
                max_tokens=int(max_new_tokens),
                logprobs=0,  # the sampled token's log-prob
                stop_token_ids=list(eos_ids),
                seed=base_seed + row,
                detokenize=False,
            )
            for row in range(len(prompts))
        ]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return completions_from_outputs(outputs, pad_id, greedy=temperature == 0.0, device=prompt_ids.device)


def completions_from_outputs(
    outputs, pad_id: int, *, greedy: bool, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's ``RequestOutput`` list as ``(completion_ids (B, T), sampling_logprobs (B, T))``, right-padded
    with ``pad_id`` / 0 to the longest completion (greedy decoding: log-probs 0, q is a point mass)."""
    rows, logprob_rows = [], []
    for out in outputs:
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        if greedy:
            values = [0.0] * len(ids)
        else:
            if completion.logprobs is None or len(completion.logprobs) != len(ids):
                raise VLLMUnavailableError(
                    "vLLM returned no log-prob for some sampled tokens (logprobs=0 was asked)"
                )
            values = [
                float(step[token].logprob) for step, token in zip(completion.logprobs, ids, strict=True)
            ]
        rows.append(ids)
        logprob_rows.append(values)
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
    for b, (r, v) in enumerate(zip(rows, logprob_rows, strict=True)):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        logprobs[b, : len(v)] = torch.tensor(v, dtype=torch.float32)
    return ids.to(device), logprobs.to(device)
