"""Training data: the prompts (and reference completions for off-policy batches) of a dataset.

Accepted layouts, as in TRL: a ``prompt`` column of strings or chat conversations, with an optional
``completion`` / ``answer`` column (or :attr:`~odistill.train.config.DistillConfig.completion_column`);
or a ``messages`` column of chats whose last assistant message is the completion.
"""

from __future__ import annotations

from .config import DistillConfig

__all__ = ["DatasetError", "PromptSource"]


class DatasetError(ValueError):
    """The training data cannot be used (empty, missing a prompt column, no completions for off-policy)."""


def _column_names(dataset) -> list[str]:
    if hasattr(dataset, "column_names"):
        return list(dataset.column_names)
    if len(dataset) and isinstance(dataset[0], dict):
        return list(dataset[0].keys())
    return []


class PromptSource:
    """Prompts (and reference completions for off-policy batches) drawn from a dataset."""

    def __init__(self, dataset, config: DistillConfig, need_completions: bool):
        if dataset is None or len(dataset) == 0:
            raise DatasetError(
                "the dataset is empty: distillation needs prompts (a 'prompt' column of strings)"
            )
        columns = _column_names(dataset)
        prompt_col = config.prompt_column
        if prompt_col not in columns and not (prompt_col == "prompt" and "messages" in columns):
            raise DatasetError(
                f"the dataset has no {prompt_col!r} column (it has {columns}); add one with the prompt text "
                "or chat messages, or set DistillConfig.prompt_column"
            )
        self.prompts, self.completions = [], []
        use_messages = prompt_col not in columns
        for row in dataset:
            if use_messages:
                msgs = list(row["messages"])
                last_is_answer = msgs and msgs[-1].get("role") == "assistant"
                self.prompts.append(msgs[:-1] if last_is_answer else msgs)
                self.completions.append(msgs[-1]["content"] if last_is_answer else None)
            else:
                self.prompts.append(row[prompt_col])
                self.completions.append(self._completion(row, config, columns))
        if need_completions and any(c is None for c in self.completions):
            raise DatasetError(
                f"off-policy batches (lmbda down to {config.min_lmbda} < 1, seq_kd=False) train on the "
                "dataset's "
                f"completions, but the dataset has no completion column (it has {columns}): "
                "add a 'completion' or 'answer' column, set DistillConfig.completion_column, "
                "use seq_kd=True to sample them from the teacher, or lmbda=1"
            )

    @staticmethod
    def _completion(row, config, columns):
        if config.completion_column is not None:
            if config.completion_column not in columns:
                raise DatasetError(
                    f"completion_column {config.completion_column!r} is not in the dataset ({columns})"
                )
            return row[config.completion_column]
        for name in ("completion", "answer"):
            if name in columns:
                return row[name]
        if "messages" in columns and row["messages"] and row["messages"][-1].get("role") == "assistant":
            return row["messages"][-1]["content"]
        return None

    def __len__(self):
        return len(self.prompts)

    def batch(self, indices: list[int]) -> tuple[list, list]:
        """The prompts and reference completions (None where there is none) of the given rows."""
        return [self.prompts[i] for i in indices], [self.completions[i] for i in indices]
