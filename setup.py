"""Packaging for mlopsnb: everything is read from settings.ini (nbdev 2's single config)."""
from configparser import ConfigParser

import shutil
import subprocess
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
min_python = cfg["min_python"]
project_files = cfg.get("project_files", "").split()


HERE = Path(__file__).resolve().parent
SKIP = {"__pycache__", ".ipynb_checkpoints"}


def tracked_files() -> set[str] | None:
    "The files git tracks in this checkout; None where this folder is not the top of a git work tree (an unpacked sdist)."
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, check=True).stdout
    try:
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != HERE: return None
        return set(filter(None, git("ls-files", "-z").split("\0")))
    except (OSError, subprocess.CalledProcessError): return None


def project_file_list() -> list[str]:
    "The reference project's files (settings.ini `project_files`, folders walked): only the tracked ones in a git checkout."
    found = []
    for f in project_files:
        p = Path(f)
        found += [p.as_posix()] if p.is_file() else [q.as_posix() for q in sorted(p.rglob("*"))
                                                      if q.is_file() and not SKIP & set(q.parts) and q.suffix != ".pyc"]
    tracked = tracked_files()
    return found if tracked is None else [f for f in found if f in tracked]


def in_project(f: str) -> bool:
    "Whether a path lies in one of the reference project's files or folders."
    return any(f == p or f.startswith(p.rstrip("/") + "/") for p in project_files)


class BuildPy(build_py):
    "Copy the reference project's files (settings.ini `project_files`) into the built package as mlopsnb/_project for `mlopsnb new`."
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False): return      # an editable install reads them from the repository
        dest = Path(self.build_lib) / cfg["lib_path"] / "_project"
        if dest.exists(): shutil.rmtree(dest)
        for f in project_file_list():         # never an untracked file of the checkout (a stray contract, a scratch notebook)
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / f)


class Sdist(sdist):
    "An sdist carries of the reference project's files only the tracked ones, so a wheel built from it carries the same."
    def make_release_tree(self, base_dir, files):
        keep = set(project_file_list())
        super().make_release_tree(base_dir, [f for f in files if not in_project(Path(f).as_posix()) or Path(f).as_posix() in keep])


setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=["mlopsnb", "mlopsnb.*"]),
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    python_requires=f">={min_python}",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    zip_safe=False,
    # Ploomber 0.23.3's Jupyter extension needs a synchronous contents manager (JupyterLab 4's async
    # default answers 500 on every path): installed as {sys.prefix}/etc/jupyter/jupyter_server_config.json,
    # so a plain `jupyter lab` from this environment gets it (files in jupyter_server_config.d/ only enable
    # extensions). Editable installs skip data_files (pypa/setuptools#3399): `make install` copies it too.
    data_files=[("etc/jupyter", ["jupyter-config/jupyter_server_config.json"]),
                ("etc/jupyter/labconfig", ["jupyter-config/labconfig/page_config.json"])],
    cmdclass={"build_py": BuildPy, "sdist": Sdist},
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
