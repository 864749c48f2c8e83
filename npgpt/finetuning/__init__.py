"""Fine-tuning a pretrained GPT: the classifier, its training loop, its data and metrics.

Companion of ``docs/finetuning.md``: ``classifier`` (the model with a
classification head), ``finetune`` (the loop), ``labelled`` (CSV, TSV and
JSONL data), ``metrics`` (accuracy, precision, recall, F1).

Nothing is imported here: each module is loaded when first imported.
"""
