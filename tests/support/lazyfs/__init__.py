"""LazyFS: a FUSE filesystem that forgets what was not synced when its power is cut.

model.py is the durability model (plain files, no FUSE), daemon.py the FUSE process,
mount.py the test's handle on a mount. Needs /dev/fuse, Debian's fuse3 and mfusepy.
"""

from tests.support.lazyfs.mount import REQUIRE_ENV, LazyFS, unavailable

__all__ = ["REQUIRE_ENV", "LazyFS", "unavailable"]
