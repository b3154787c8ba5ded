"""The built-in ``vae`` task: train on the negative (beta-)ELBO, stop early on the validation ELBO.

The loss and the validation ELBO (torch) are in :mod:`vae_automl.builtin.tasks_impl`, imported when a model trains.
"""

from __future__ import annotations

from collections.abc import Callable

from vae_automl.components import Task, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.tasks_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3


class VaeTask(Task):
    name = "vae"
    help = "a VAE trained on the negative ELBO (nats per image); the default task"
    default_objectives = ("test_elbo_nats", "size_bytes")
    loss = implemented_in(f"{IMPL}:VaeTaskCode")
    validation_loss = implemented_in(f"{IMPL}:VaeTaskCode")


@hookimpl
def register_tasks(register: Callable[[Task], None]) -> None:
    register(VaeTask())
