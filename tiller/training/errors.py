"""Training's own failures (any stage's), in a module without heavy imports: the CLI catches them in every
process, and a launcher that never trains should not import torch (1.8 s) to name one."""


class NonFiniteTraining(RuntimeError):
    """Training produced non-finite numbers the guard could not step around."""
