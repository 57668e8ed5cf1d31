"""The demo profile's own code, each module named for what it is: the offline stand-ins (the ``template``
generator, the ``heuristic`` judges, the ``simulated`` clinician), the training of the demo's tiny models
(``foundation``: the tiny CLIP, reading the hidden truth for its laterality probe; ``tokenizer``: the demo
LLM's BPE) and its stored checkpoints (``pretrained``: backend ``restore``; ``pretrain``: ``vital pretrain``).
Imported only through the backend registries (``vital.registry``) when params choose them, so no other
profile imports or depends on them (tests/test_paper_profile.py runs the paper profile with them forbidden)."""
