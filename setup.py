"""Packaging for musicsae: reads settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']
reqs = c.get('requirements', '').split()
dev = c.get('dev_requirements', '').split()
extras = {
    'dev': dev,
    # Optional backends and labelers; see README "Optional extras".
    'gemini': ['google-genai>=1.0', 'pydantic>=2'],
    # a pre-release cp311 manylinux wheel (~290 MB); pinned exactly so pip takes it without --pre
    'essentia': ['essentia-tensorflow==2.1b6.dev1389; platform_machine == "x86_64" and python_version == "3.11"'],
    'clap': [],  # transformers' ClapModel is the default scorer and needs nothing more
    # tests that our exported SAEs load in SAELens; pulls transformer-lens, datasets and wandb
    'saelens': ['sae-lens==6.54.12'],
    # the SAE benchmark's baseline (installed --no-deps by `make bench-deps`: it pins its own torch)
    'bench': ['natsort', 'schedulefree'],
}
setuptools.setup(
    name=c['lib_name'], version=c['version'], description=c['description'],
    author=c['author'], author_email=c['author_email'], license='Apache-2.0',
    packages=setuptools.find_packages(include=['musicsae', 'musicsae.*']),
    # package_data names every data file: the human study's page (index.html, study.js, study.css), which
    # musicsae.study_server serves from the package. include_package_data=True added no file here, only setuptools'
    # "Package 'musicsae.study_page' is absent from the `packages` configuration" warning.
    include_package_data=False, package_data={'musicsae': ['assets/*', 'study_page/*', 'atlas_site/*']},
    install_requires=reqs, extras_require=extras, python_requires=f">={c['min_python']}",
    zip_safe=False,
)
