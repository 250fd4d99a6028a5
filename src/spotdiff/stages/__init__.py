"""The pipeline's stages: one module per `dvc.yaml` stage, in `dvc.yaml`'s order.

A stage module is the whole stage: its `spotdiff <name>` command (`spotdiff check-params` for
`check_params`), its entry point `run(params, ...)` that builds objects from the params and calls
the library, and a docstring listing what it reads and writes. Like the rest of the command-line
layer it imports the library inside its functions, so `spotdiff --help` stays fast. `dvc.yaml` lists,
for each stage, this module and every first-party module it imports (`tests/test_stages.py`).

`STAGES` is the one list of stage names: the CLI registers their commands from it, the Prefect flow
runs them in its order, and `tests/test_stages.py` checks it against `dvc.yaml`.
"""

STAGES = ("check_params", "data", "inpaint", "pairs", "train", "testsets", "evaluate", "register")
