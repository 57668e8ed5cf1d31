"""The LLaVA model: tokenizer, open_clip -> HF conversion, tiny base assembly, alignment, tuning.

Modules: ``tokenizer`` (corpus BPE), ``convert`` (open_clip ViT -> ``CLIPVisionModel``), ``build`` (tiny
``LlavaForConditionalGeneration`` + processor + chat template), ``conversation`` (template, masking,
collator), ``trainer`` (accelerate loop, checkpoints, resume), ``align`` (stage 1), ``tune`` (stage 2),
``testing`` (tiny fixtures). ``inference`` belongs to the evaluation.
"""
