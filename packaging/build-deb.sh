#!/usr/bin/env bash
# Builds the Debian package of nodepass: target/debian/nodepass_<version>_<arch>.deb.
#
#   packaging/build-deb.sh                 release build, then the package
#   packaging/build-deb.sh --debug         package the existing debug binary (fast; tests)
#   packaging/build-deb.sh -- --deb-version 0.1.0-2   extra arguments go to `cargo deb`
#
# Needs cargo-deb (`cargo install cargo-deb --locked`). What goes where is the
# [package.metadata.deb] table of Cargo.toml; this script only makes the generated assets
# (completions and man page from the CLI definition, the unit with its /usr/bin path) in
# target/deb-assets/ first.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --debug) profile=debug ;;
        --) shift; extra=("$@"); break ;;
        *) echo "build-deb.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
    esac
    shift
done

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb is not installed; run: cargo install cargo-deb --locked" >&2
    exit 3
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$profile" = release ]; then
    cargo build --release --locked --bin nodepass
fi
bin="$target_dir/$profile/nodepass"
[ -x "$bin" ] || { echo "build-deb.sh: $bin is missing; build it first" >&2; exit 1; }

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
cp "$bin" "$assets/nodepass"
# The release package is stripped (the build keeps line tables for backtraces); the debug
# one the test makes is packaged as it is.
if [ "$profile" = release ] && command -v strip >/dev/null 2>&1; then
    strip "$assets/nodepass"
fi
"$bin" completions bash > "$assets/nodepass.bash"
"$bin" completions zsh > "$assets/_nodepass"
"$bin" completions fish > "$assets/nodepass.fish"
"$bin" man | gzip -9n > "$assets/nodepass.1.gz"
sed -e 's#/usr/local/bin/nodepass#/usr/bin/nodepass#g' \
    -e 's#/usr/local/share/doc/nodepass#/usr/share/doc/nodepass#g' \
    packaging/nodepass.service > "$assets/nodepass.service"

cargo deb --no-build --no-strip --output target/debian/ "${extra[@]}"
