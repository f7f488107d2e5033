#!/usr/bin/env bash
# Keeps cargo's shared target dir ($CARGO_TARGET_DIR) from filling the disk.
#
# The target dir lives outside the checkout and survives every CI run and every edit, and cargo
# never removes anything from it: each change of a workspace crate's version, features or
# dependencies leaves its old artifacts behind (a test executable is 50-200 MiB with line tables),
# and every crate's incremental state accumulates one directory per hash. Left alone it grew to
# 46 GiB here and a CI link failed with "ld terminated with signal 7 [Bus error]" (the disk was
# full). This runs before `make build` and `make test`:
#
#   1. workspace artifacts (in deps/ and examples/): per file stem, only the 6 newest hashes stay
#      (a crate is built as a lib, a test, for clippy and for docs: 4-5 live hashes);
#   2. incremental state: per crate, only the 4 newest directories stay;
#   3. anything else in deps/, build/ and .fingerprint/ not read for 10 days goes (stale
#      third-party builds after a Cargo.lock change; relatime refreshes atime daily on use).
#
# A removed artifact that is still wanted is rebuilt: cargo treats a missing output as dirty.
# Finally it prints the dir's size and warns loudly when less than 15 GiB stay free.
set -euo pipefail

dir="${CARGO_TARGET_DIR:?CARGO_TARGET_DIR must name the target dir}"
profile_dir="$dir/debug"
[ -d "$profile_dir" ] || exit 0

before=$(du -sm "$dir" | cut -f1)

python3 - "$profile_dir" <<'EOF'
import os, re, shutil, sys, time

root = sys.argv[1]
hashed = re.compile(r'^(?P<stem>.+?)-(?P<hash>[0-9a-f]{16})(?P<ext>\..*)?$')
workspace = re.compile(r'^(lib)?(kata|shim_ctl|containerd_shim_kata_v2)')

def prune_hashed(sub, keep, only_workspace):
    path = os.path.join(root, sub)
    if not os.path.isdir(path):
        return
    groups = {}
    for name in os.listdir(path):
        m = hashed.match(name)
        if not m:
            continue
        stem = m.group('stem')
        if stem.startswith('lib'):
            stem = stem[3:]
        if only_workspace and not workspace.match(stem) and not is_workspace_test(path, name, m):
            continue
        full = os.path.join(path, name)
        try:
            mtime = os.lstat(full).st_mtime
        except FileNotFoundError:
            continue
        by_hash = groups.setdefault(stem, {})
        by_hash.setdefault(m.group('hash'), []).append((full, mtime))
    for stem, by_hash in groups.items():
        ranked = sorted(by_hash.items(), key=lambda kv: max(t for _, t in kv[1]), reverse=True)
        for _, files in ranked[keep:]:
            for full, _ in files:
                remove(full)

def is_workspace_test(path, name, m):
    # Integration-test executables are named after their file (vm_sandbox-<hash>); their
    # dep-info names a source file under a workspace crate's tests/ or examples/.
    dep = os.path.join(path, m.group('stem') + '-' + m.group('hash') + '.d')
    try:
        with open(dep, 'r', errors='replace') as f:
            head = f.read(4096)
    except OSError:
        return False
    return '/tests/' in head or '/examples/' in head or '/benches/' in head

def remove(full):
    try:
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)
    except FileNotFoundError:
        pass

# 1. workspace artifacts
prune_hashed('deps', 6, True)
prune_hashed('examples', 6, True)

# 2. incremental state: <crate>-<hash> directories
inc = os.path.join(root, 'incremental')
if os.path.isdir(inc):
    groups = {}
    for name in os.listdir(inc):
        stem, _, _ = name.rpartition('-')
        full = os.path.join(inc, name)
        groups.setdefault(stem, []).append((os.lstat(full).st_mtime, full))
    for entries in groups.values():
        for _, full in sorted(entries, reverse=True)[4:]:
            remove(full)

# 3. anything not read for 10 days
cutoff = time.time() - 10 * 86400
for sub in ('deps', 'build', '.fingerprint'):
    path = os.path.join(root, sub)
    if not os.path.isdir(path):
        continue
    for name in os.listdir(path):
        full = os.path.join(path, name)
        st = os.lstat(full)
        if max(st.st_atime, st.st_mtime) < cutoff:
            remove(full)
EOF

after=$(du -sm "$dir" | cut -f1)
free=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
echo "target-gc: $dir $before MiB -> $after MiB, $free MiB free"
if [ "$free" -lt 15360 ]; then
    echo "target-gc: WARNING: less than 15 GiB free on $dir's filesystem; a full build and" \
         "test run needs about 20 GiB (a full disk shows up as a linker 'Bus error')" >&2
fi
