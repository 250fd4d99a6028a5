"""The pipeline's stages: one module per `dvc.yaml` stage, each with one entry point, `run(params, ...)`.

A stage module builds objects from the params and calls into the library; it holds no algorithm of
its own. Its docstring lists what it reads and writes. The `spotdiff <stage>` commands are thin
wrappers (`spotdiff check-params` for `check_params`) that parse options, call `run` and print its summary. `dvc.yaml` lists, for each stage,
this module and every first-party module it imports (checked by `tests/test_stages.py`).
"""

STAGES = ("check_params", "data", "inpaint", "pairs", "train", "testsets", "evaluate", "register")
