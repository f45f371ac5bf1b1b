"""`bundle export --platform TAG`: a bundle for another platform than this one.

The target is a wheel platform tag (manylinux_2_28_x86_64, manylinux_2_28_aarch64,
macosx_11_0_arm64, ...) and a Python version. Its wheels are downloaded for it
(`pip download --platform`); llama-cpp-python, which has no binary wheel there, goes in as
its sdist with its build requirements (scikit-build-core, cmake, ninja) as wheels for the
target, so that install.sh compiles it there, offline, for that machine's own CPU.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from tui_infer.core.bundle.manifest import BundleError

_MACHINES = ("x86_64", "aarch64", "arm64", "i686", "armv7l", "ppc64le", "s390x", "riscv64")


@dataclass(frozen=True)
class Target:
    tag: str
    python_version: str  # "3.11"
    system: str  # as platform.system() says it there: Linux, Darwin
    machine: str  # as platform.machine() says it there

    def platforms(self) -> list[str]:
        """The tag and every older one a machine of it runs: pip takes --platform as given,
        so manylinux_2_28 alone would miss the many wheels built for manylinux_2_17."""
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", self.tag)
        if m:
            glibc, arch = int(m.group(1)), m.group(2)
            tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
            tags += [f"{name}_{arch}" for v, name in legacy.items() if v <= glibc]
            return tags
        m = re.fullmatch(r"macosx_(\d+)_(\d+)_(\w+)", self.tag)
        if m:
            major, arch = int(m.group(1)), m.group(3)
            tags = [f"macosx_{v}_0_{arch}" for v in range(major, 10, -1)]
            tags += [f"macosx_10_{v}_{arch}" for v in range(15, 8, -1)] if arch == "x86_64" else []
            archs = [arch, "universal2"]
            return [t.replace(f"_{arch}", f"_{a}") for a in archs for t in tags]
        return [self.tag]

    def pip_args(self) -> list[str]:
        return [
            *(x for tag in self.platforms() for x in ("--platform", tag)),
            "--python-version",
            self.python_version,
            "--implementation",
            "cp",
            "--only-binary=:all:",
        ]

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values for the target (which dependencies it needs)."""
        from packaging.markers import default_environment

        env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
        linux = self.system == "Linux"
        env.update(
            sys_platform="linux" if linux else "darwin",
            platform_system=self.system,
            os_name="posix",
            platform_machine=self.machine,
            python_version=self.python_version,
            python_full_version=f"{self.python_version}.0",
        )
        return env


def parse(tag: str, python_version: str | None) -> Target:
    """A wheel platform tag and a Python version (default: this one's); BundleError for
    what install.sh could not install (Windows, an unknown tag)."""
    version = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not re.fullmatch(r"3\.\d{1,2}", version):
        raise BundleError(f"--python-version: give it as 3.X (such as 3.11), got {version!r}")
    low = tag.strip().lower()
    machine = next((m for m in _MACHINES if low.endswith("_" + m)), None)
    if low.startswith(("manylinux", "musllinux", "linux")) and machine:
        return Target(low, version, "Linux", machine)
    if low.startswith("macosx_") and machine in ("x86_64", "arm64"):
        return Target(low, version, "Darwin", machine)
    raise BundleError(
        f"--platform {tag}: not a platform install.sh can install on; give a wheel platform "
        "tag such as manylinux_2_28_x86_64, manylinux_2_28_aarch64 or macosx_11_0_arm64"
    )
