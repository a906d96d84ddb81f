#!/usr/bin/env bash
# Checks that vendor/actix-http is the release it names and nothing else:
#
#   the published .crate of the version in vendor/actix-http/Cargo.toml (sha256 pinned below)
#   minus the published files we do not vendor (`removed` below)
#   plus vendor/actix-http.patch
#   plus vendor/actix-http/PATCHED.md
#
# Any other difference (an edited, added or missing file, a changed executable bit, a patch
# that does not apply exactly) fails with the difference printed. See vendor/actix-http/PATCHED.md.
#
#   .ci/check-vendored.sh                check (run by .ci/run)
#   .ci/check-vendored.sh --write-patch  rewrite vendor/actix-http.patch from the vendored tree,
#                                        then check (for an upgrade or a change to the patch)
#
# The .crate comes from cargo's download cache if it holds it, otherwise from crates.io.
set -euo pipefail

crate=actix-http

# sha256 of the published actix-http-<version>.crate, one entry per version we have vendored.
# Each value equals the "cksum" of that version in the crates.io index
# (https://index.crates.io/ac/ti/actix-http), which is also what Cargo.lock records for
# registry crates.
declare -A pinned_sha256=(
    [3.20.0]=d20a22850ea7fecad12c5f8cd97d246c3af1f04ef400033977c2f13425c45816
)

# Published paths that are not vendored: examples, tests and benches (never built here, and
# their dev-dependencies are dropped from Cargo.toml by the patch), the crate's own Cargo.lock
# (ignored for a dependency), and cargo's packaging records Cargo.toml.orig and
# .cargo_vcs_info.json.
removed=(examples tests benches Cargo.lock Cargo.toml.orig .cargo_vcs_info.json)

write_patch=false
case "${1-}" in
    "") ;;
    --write-patch) write_patch=true ;;
    *) echo "usage: $0 [--write-patch]" >&2; exit 2 ;;
esac

fail() {
    echo "check-vendored: FAIL: $*" >&2
    exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendored="$root/vendor/$crate"
patch_file="$root/vendor/$crate.patch"
[[ -f $vendored/Cargo.toml ]] || fail "$vendored/Cargo.toml not found"
[[ -f $patch_file || $write_patch == true ]] || fail "$patch_file not found"

# The version is the one the vendored Cargo.toml declares in [package]: an upgrade changes it there only.
package_field() {
    awk -v key="$1" '
        /^\[/ { in_package = ($0 == "[package]"); next }
        in_package && $1 == key && $2 == "=" {
            value = $3; gsub(/"/, "", value); print value; exit
        }' "$vendored/Cargo.toml"
}
name="$(package_field name)"
version="$(package_field version)"
[[ $name == "$crate" ]] || fail "vendor/$crate/Cargo.toml names package '$name', expected '$crate'"
[[ -n $version ]] || fail "no [package] version in vendor/$crate/Cargo.toml"
expected="${pinned_sha256[$version]-}"
[[ -n $expected ]] || fail "no pinned sha256 for $crate $version in $0: add the \"cksum\" that
https://index.crates.io/ac/ti/$crate lists for \"vers\":\"$version\", after checking it equals the
sha256sum of the downloaded .crate (vendor/$crate/PATCHED.md, 'Upgrading')"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
file="$crate-$version.crate"

# First source whose bytes have the pinned sha256: cargo's cache, then crates.io.
sources=()
for cached in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$file"; do
    [[ -f $cached ]] && sources+=("$cached")
done
sources+=("https://static.crates.io/crates/$crate/$file"
          "https://crates.io/api/v1/crates/$crate/$version/download")
found=""
for src in "${sources[@]}"; do
    rm -f "$tmp/$file"
    if [[ $src == https://* ]]; then
        curl -sSfL --retry 2 --connect-timeout 20 -o "$tmp/$file" "$src" || continue
    else
        cp "$src" "$tmp/$file"
    fi
    actual="$(sha256sum "$tmp/$file" | cut -d' ' -f1)"
    if [[ $actual == "$expected" ]]; then
        found="$src"
        break
    fi
    echo "check-vendored: warning: $src has sha256 $actual, pinned $expected; not used" >&2
done
[[ -n $found ]] || fail "could not get $file with sha256 $expected (tried: ${sources[*]})"
echo "check-vendored: $file from $found, sha256 $expected"

mkdir "$tmp/release"
tar -xzf "$tmp/$file" -C "$tmp/release"
release="$tmp/release/$crate-$version"
[[ -d $release ]] || fail "$file does not unpack to $crate-$version/"
for path in "${removed[@]}"; do
    [[ -e $release/$path ]] || fail "'$path' is listed as removed but $file has no such path: update 'removed' in $0"
    rm -rf "${release:?}/$path"
done

# Every file, relative, one per line, sorted; PATCHED.md is ours and not part of the patch.
list_files() {
    (cd "$1" && find . \( -type f -o -type l \) ! -path ./PATCHED.md | sed 's|^\./||' | LC_ALL=C sort)
}

if [[ $write_patch == true ]]; then
    {
        echo "idv-broker's changes to $crate $version as published on crates.io, after removing:"
        echo "${removed[*]}."
        echo "Why: vendor/$crate/PATCHED.md. Written by .ci/check-vendored.sh --write-patch;"
        echo "applied with: patch -p1 --fuzz=0 < vendor/$crate.patch"
        echo
        LC_ALL=C comm <(list_files "$release") <(list_files "$vendored") | while IFS= read -r line; do
            # comm: column 1 (no tab) only in the release, 2 (one tab) only vendored, 3 (two tabs) both.
            path="${line##*$'\t'}"
            case "$line" in
                $'\t\t'*) old="$release/$path" old_label="a/$path" new="$vendored/$path" new_label="b/$path" ;;
                $'\t'*) old=/dev/null old_label=/dev/null new="$vendored/$path" new_label="b/$path" ;;
                *) old="$release/$path" old_label="a/$path" new=/dev/null new_label=/dev/null ;;
            esac
            status=0
            diff -u --label "$old_label" --label "$new_label" "$old" "$new" || status=$?
            ((status <= 1)) || exit 1
        done
    } > "$tmp/new.patch"
    if grep -q '^Binary files ' "$tmp/new.patch"; then
        fail "a binary file differs; a text patch cannot carry it"
    fi
    mv "$tmp/new.patch" "$patch_file"
    echo "check-vendored: wrote $patch_file"
fi

if ! patch_log="$(patch -d "$release" -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch < "$patch_file" 2>&1)"; then
    printf '%s\n' "$patch_log" >&2
    fail "vendor/$crate.patch does not apply exactly to $crate $version"
fi
cp "$vendored/PATCHED.md" "$release/PATCHED.md"

status=0
diff -ru --no-dereference "$release" "$vendored" > "$tmp/diff" || status=$?
if ((status == 0)); then
    # diff -r ignores permissions; the executable bits must match too.
    executables() { (cd "$1" && find . -type f -perm /111 | LC_ALL=C sort); }
    if ! diff -u --label release --label vendored <(executables "$release") <(executables "$vendored") > "$tmp/diff"; then
        status=1
    fi
fi
if ((status != 0)); then
    sed -e "s|$release|<release+patch>|g" -e "s|$vendored|vendor/$crate|g" "$tmp/diff" >&2
    fail "vendor/$crate differs from $crate $version + vendor/$crate.patch (above). Either undo the
change, or record it in the patch (.ci/check-vendored.sh --write-patch) and explain it in
vendor/$crate/PATCHED.md."
fi
echo "check-vendored: OK: vendor/$crate = $crate $version - (${removed[*]}) + vendor/$crate.patch + PATCHED.md"
