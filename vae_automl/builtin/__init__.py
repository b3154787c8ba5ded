"""The built-in plugins; each module registers through the same hooks as a third party's."""
