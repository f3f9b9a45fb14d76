"""Packaging for brigade-cr: a container-registry webhook gateway for Brigade v1."""

from setuptools import find_packages, setup

setup(
    name="brigade-cr",
    version="0.1.0",
    description="Container-registry webhooks to Brigade v1 builds, on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=["brigade_cr", "brigade_cr.*"]), "twisted.plugins"],
    # twisted/ and twisted/plugins/ deliberately have no __init__.py: they are
    # namespace contributions to Twisted's plugin package, and an __init__.py
    # would shadow Twisted's own.
    package_data={"twisted.plugins": ["brigade_cr_plugin.py"]},
    install_requires=[
        # 24.7.0 fixed HTTP pipelining and request-smuggling bugs (promise P12).
        "Twisted[tls]>=24.7.0",
        "klein>=23.5.0",
        "treq>=23.11.0",
        "zope.interface>=6.0",
        "attrs>=23.1.0",
        # Used only to load kubeconfig / in-cluster configuration; its blocking
        # API client never runs on the reactor.
        "kubernetes>=29.0.0",
        "PyYAML>=6.0",
        "prometheus_client>=0.17",
    ],
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
