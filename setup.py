"""Packaging for fedtier.

The design card puts each component in its own top-level folder (``combiner/``,
``client/``...). Installing those as top-level Python packages would claim generic
names such as ``client`` and ``helpers`` in site-packages, so every folder is
mapped under the single ``fedtier`` namespace instead: ``combiner/`` is imported as
``fedtier.combiner``. The foundation (configuration, storage, transport) lives in
``fedtier/`` itself and imports no component; the launchers (the CLI, the sandbox)
live in ``launch/`` above the components, the projects' data tools in ``datatools/``.
"""
from setuptools import find_packages, setup

COMPONENTS = ["proto", "reducer", "combiner", "client", "helpers", "launch", "datatools"]


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = ["fedtier"] + ["fedtier." + p for p in find_packages("fedtier")]
    package_dir = {"fedtier": "fedtier"}
    for component in COMPONENTS:
        packages.append(f"fedtier.{component}")
        package_dir[f"fedtier.{component}"] = component
        for sub in find_packages(component):
            packages.append(f"fedtier.{component}.{sub}")
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

TORCH = ["torch==2.13.0"]  # CPU build; the registry's newest pulls gigabytes of CUDA
KERAS = ["keras>=3.5"] + TORCH  # Keras 3 on the torch backend, no TensorFlow

setup(
    name="fedtier",
    version="0.1.0",
    description="A tiered reducer/combiner federated learning network",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"fedtier.proto": ["*.proto"], "fedtier.reducer": ["templates/*.html", "static/*"]},
    include_package_data=True,
    install_requires=[
        "grpcio>=1.85.1",
        "protobuf>=7.35.1",  # the committed stubs call ValidateProtobufRuntimeVersion(7, 35, 1)
        "numpy>=1.26",
        "flask>=3.0",
        "pyyaml>=6.0",
        "requests>=2.31",
        "minio>=7.2",
        "pymongo>=4.6",
        "cryptography>=42",  # fedtier certs: the federation's CA and server certificates
        "pyjwt>=2.8",  # signed credentials (fedtier/identity.py): EdDSA over cryptography
        "xxhash>=3.4",  # the transfer checksum (XXH3-128): a fifth of sha256's cost per byte
        "rich>=13",  # fedtier.sdk: the progress bar of Reducer.wait and fedtier wait
        "croniter>=6.0",  # schedules' cron expressions (reducer/schedules.py)
        "cheroot>=11.1",  # the reducer's HTTP server: threads in its process, TLS (reducer/serve.py)
        "prometheus-client>=0.20",  # /metrics of the reducer and each combiner (reducer/metrics.py, combiner/metrics.py)
        "threadpoolctl>=3.1",  # Krum's distance products on one BLAS thread (fedtier/aggregators/krum.py)
        "jsonschema>=4.20",  # the lab's scenario file (launch/scenario.py)
        "psutil>=5.9",  # the lab's memory figures: RSS of every process of its network (launch/lab.py)
        "matplotlib>=3.8",  # the lab's plots, PNG through the Agg backend (launch/lab_report.py)
    ],
    extras_require={
        "torch": TORCH,
        "keras": KERAS,
        "dev": KERAS + [
            "scikit-learn>=1.4",
            "grpcio-tools==1.85.1",  # pinned: tests/test_proto.py compares its output byte for byte
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",  # property tests (tests/test_heterogeneity.py, tests/test_server_strategies.py)
            "moto[server]>=5.0",
            "mongomock>=4.1",
            "safetensors>=0.4",  # only to prove our files interoperate (tests/test_format.py)
            "playwright>=1.45",  # tests/test_ui.py: only its driver, with Debian's chromium (no playwright install)
            "schemathesis>=4.0",  # fuzzes a live reducer against its OpenAPI document
            "kubernetes-validate>=1.30",  # Kubernetes' schemas, offline: tests/test_kubernetes.py
        ],
    },
    entry_points={"console_scripts": ["fedtier=fedtier.launch.cli:main"]},
)
