#!/usr/bin/env bash
# Writes to DEST the part of the workspace that decides the dependency graph:
# every Cargo.toml, Cargo.lock, build scripts, the proto files they compile,
# .cargo/config.toml and tools/, and an empty stub for every source file a
# manifest names or cargo would discover (lib.rs, main.rs, src/bin, benches,
# tests, examples). Building that tree compiles every dependency and runs the
# build scripts; the Docker layer holding the result changes only when a
# manifest, the lock file or the proto changes (what cargo-chef does, with
# cargo and bash alone).
#
# usage: recipe.sh SRC DEST
set -euo pipefail
src=${1:?usage: recipe.sh SRC DEST}
dest=${2:?usage: recipe.sh SRC DEST}
cd "$src"
mkdir -p "$dest"

copy() { mkdir -p "$dest/$(dirname "$1")" && cp -p "$1" "$dest/$1"; }

copy Cargo.toml
copy Cargo.lock
[ -f .cargo/config.toml ] && copy .cargo/config.toml
[ -d tools ] && while IFS= read -r -d '' f; do copy "$f"; done < <(find tools -type f -print0)
[ -d proto ] && while IFS= read -r -d '' f; do copy "$f"; done < <(find proto -type f -print0)

# Workspace members: every directory below crates/ and tests/ with a Cargo.toml.
while IFS= read -r -d '' manifest; do
    dir=$(dirname "$manifest")
    copy "$manifest"
    [ -f "$dir/build.rs" ] && copy "$dir/build.rs"
    while IFS= read -r -d '' rs; do
        mkdir -p "$dest/$(dirname "$rs")"
        case "$rs" in
            */src/lib.rs) : > "$dest/$rs" ;;
            # Binaries, benches, tests, examples: an empty main is enough.
            */src/main.rs | */src/bin/* | */benches/* | */tests/* | */examples/*)
                echo 'fn main() {}' > "$dest/$rs" ;;
            # Any other file a manifest names as a target root.
            *) echo 'fn main() {}' > "$dest/$rs" ;;
        esac
    done < <(
        {
            find "$dir/src" -maxdepth 1 \( -name lib.rs -o -name main.rs \) -print0 2>/dev/null
            find "$dir/src/bin" "$dir/benches" "$dir/tests" "$dir/examples" \
                -maxdepth 1 -name '*.rs' -print0 2>/dev/null
            # Explicit target paths, e.g. [[bin]] path = "src/main.rs".
            sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" |
                while IFS= read -r p; do [ -f "$dir/$p" ] && printf '%s\0' "$dir/$p"; done
        } | sort -zu
    )
done < <(find crates tests -name Cargo.toml -not -path '*/target/*' -print0 2>/dev/null)
