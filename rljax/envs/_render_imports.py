"""Gymnax's plotting imports, loaded when first used instead of when gymnax is imported.

gymnax's env modules import ``matplotlib.pyplot`` and ``seaborn`` at their top for render
functions that rljax never calls; with seaborn's pandas and scipy that is about 0.8 s of every
process that makes an env (a tenth of a CartPole run from the command line). Importing this
module before gymnax registers a stand-in for each that imports the real module on its first
attribute access. A module already imported is left as it is.
"""

import importlib
import sys
import types

DEFERRED = ("seaborn", "matplotlib.pyplot")


class _ImportedOnFirstUse(types.ModuleType):
    def __getattr__(self, attribute):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        module = importlib.import_module(name)
        self.__dict__.update(module.__dict__)  # later lookups through this stand-in are plain
        return getattr(module, attribute)


for _name in DEFERRED:
    if _name not in sys.modules:
        sys.modules[_name] = _ImportedOnFirstUse(_name)
