__version__ = "0.1.0"

from .moved import install as _install_moved   # modules moved into packages keep their old names (mlopsnb.moved)
_install_moved()
