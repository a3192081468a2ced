"""Packaging for mlopsnb: everything is read from settings.ini (nbdev 2's single config)."""
from configparser import ConfigParser

import shutil
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
min_python = cfg["min_python"]
project_files = cfg.get("project_files", "").split()


class BuildPy(build_py):
    "Copy the reference project's files (settings.ini `project_files`) into the built package as mlopsnb/_project for `mlopsnb new`."
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False): return      # an editable install reads them from the repository
        dest = Path(self.build_lib) / cfg["lib_path"] / "_project"
        if dest.exists(): shutil.rmtree(dest)
        for f in project_files:
            if Path(f).is_dir(): shutil.copytree(f, dest / f, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc"))
            else: (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(f, dest / f)


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
    cmdclass={"build_py": BuildPy},
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
