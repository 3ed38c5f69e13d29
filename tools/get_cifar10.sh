#!/usr/bin/env bash
# Puts CIFAR-10 (official binary format) into DEST/cifar-10-batches-bin, where the speedrun
# binaries find it without flags when DEST is the default. See docs/data.md.
set -euo pipefail

URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5="c32a1d4ab5d03f1284b67883e8d87530"
FILES=(data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin
       test_batch.bin)
FILE_BYTES=30730000  # 10,000 records of 1 label byte + 3,072 pixel bytes

usage() {
  cat <<EOF
usage: tools/get_cifar10.sh [--from PATH] [DEST]

Puts the CIFAR-10 binary batches into DEST/cifar-10-batches-bin
(DEST default: ~/.cache/cifar-speedrun, the folder the binaries look in by default).
Does nothing if the six files are already there.

Where the data comes from, first match wins:
  --from PATH   a local copy: a folder holding the .bin files or a cifar-10-batches-bin
                subfolder, or the official cifar-10-binary.tar.gz (its MD5 is checked)
  ../shared/cifar10/build_bins.py (next to the repo), if present: rebuilds the files offline
                from the shared tiles and checks their SHA-256 (needs /usr/bin/python3 with
                Pillow WebP support, Debian: python3-pil, or the dwebp command, Debian: webp)
  otherwise     downloads $URL
                with curl or wget and checks its MD5 before extracting

Everything is written to a temporary folder inside DEST and moved into place at the end, so
an interrupted run leaves no half-written data behind.
EOF
}

die() {
  echo "get_cifar10: error: $*" >&2
  exit 1
}

from=""
dest=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --from) [[ $# -ge 2 ]] || die "--from needs a PATH (see --help)"; from="$2"; shift 2 ;;
    --from=*) from="${1#--from=}"; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$dest" ]] || die "more than one DEST given: '$dest' and '$1' (see --help)"
       dest="$1"; shift ;;
  esac
done

# Same default as data::default_cache_dir(): $HOME, else the password database, else the
# temp folder.
home="${HOME:-}"
[[ -n "$home" ]] || home="$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6 || true)"
if [[ -n "$home" ]]; then
  default_dest="$home/.cache/cifar-speedrun"
else
  default_dest="${TMPDIR:-/tmp}/cifar-speedrun"
fi
[[ -n "$dest" ]] || dest="$default_dest"
out="$dest/cifar-10-batches-bin"

# Prints the names of the six files that are missing from $1 or have the wrong size.
bad_files() {
  local f size
  for f in "${FILES[@]}"; do
    if [[ ! -f "$1/$f" ]]; then
      echo "$f (missing)"
    else
      size=$(wc -c < "$1/$f" | tr -d ' ')
      [[ "$size" == "$FILE_BYTES" ]] || echo "$f ($size bytes, expected $FILE_BYTES)"
    fi
  done
}

if [[ -d "$out" ]] && [[ -z "$(bad_files "$out")" ]]; then
  echo "get_cifar10: CIFAR-10 is already in $out (all six batch files, full size); nothing to do."
  exit 0
fi

[[ -z "$from" || -e "$from" ]] || die "--from $from: no such file or folder"
mkdir -p "$dest" || die "cannot create $dest (choose another DEST, see --help)"
[[ -w "$dest" ]] || die "$dest is not writable (choose another DEST, see --help)"
# The temporary folder sits inside DEST so the final mv is a rename on the same file system.
tmp="$(mktemp -d "$dest/.get_cifar10.XXXXXX")" || die "cannot create a temporary folder in $dest"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# md5sum (GNU) or md5 (BSD, macOS); extract_tarball checks that one exists.
md5_of() {
  if command -v md5sum >/dev/null 2>&1; then md5sum "$1" | cut -d' ' -f1; else md5 -q "$1"; fi
}

# Checks the official archive $1 and extracts its cifar-10-batches-bin into $tmp.
extract_tarball() {
  local sum
  command -v md5sum >/dev/null 2>&1 || command -v md5 >/dev/null 2>&1 ||
    die "neither md5sum nor md5 found, cannot check $1 (Debian: apt-get install coreutils)"
  sum="$(md5_of "$1")"
  [[ "$sum" == "$MD5" ]] ||
    die "$1 has MD5 $sum, expected $MD5: it is not the official cifar-10-binary.tar.gz or it is damaged (delete it and download again)"
  echo "get_cifar10: MD5 ok, extracting"
  tar -xzf "$1" -C "$tmp" || die "could not extract $1"
  [[ -d "$tmp/cifar-10-batches-bin" ]] || die "$1 holds no cifar-10-batches-bin folder"
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_bins="$repo/../shared/cifar10/build_bins.py"

if [[ -n "$from" ]]; then
  if [[ -d "$from" ]]; then
    src="$from"
    if [[ -n "$(bad_files "$src")" ]] && [[ -d "$from/cifar-10-batches-bin" ]]; then
      src="$from/cifar-10-batches-bin"
    fi
    problems="$(bad_files "$src")"
    [[ -z "$problems" ]] ||
      die "--from $from: not a complete CIFAR-10 copy; in $src:"$'\n'"$problems"
    echo "get_cifar10: copying from $src"
    mkdir "$tmp/cifar-10-batches-bin"
    for f in "${FILES[@]}"; do
      cp "$src/$f" "$tmp/cifar-10-batches-bin/$f" || die "could not copy $src/$f"
    done
    [[ ! -f "$src/batches.meta.txt" ]] || cp "$src/batches.meta.txt" "$tmp/cifar-10-batches-bin/"
  elif [[ -f "$from" ]]; then
    echo "get_cifar10: using the archive $from"
    extract_tarball "$from"
  else
    die "--from $from: neither a folder nor a file"
  fi
elif [[ -f "$build_bins" ]]; then
  python=/usr/bin/python3
  [[ -x "$python" ]] || python="$(command -v python3 || true)"
  [[ -n "$python" ]] || die "found $build_bins but no python3 to run it (Debian: apt-get install python3 python3-pil)"
  echo "get_cifar10: rebuilding from the shared tiles with $build_bins (a few seconds)"
  "$python" "$build_bins" "$tmp" ||
    die "$build_bins failed. It needs Pillow with WebP support for $python (Debian: apt-get install python3-pil) or the dwebp command (Debian: apt-get install webp). Or use --from PATH with a copy you have."
else
  archive="$tmp/cifar-10-binary.tar.gz"
  echo "get_cifar10: downloading $URL (about 170 MB)"
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 -o "$archive" "$URL" ||
      die "download failed (no network? then use --from PATH with a copy you have)"
  elif command -v wget >/dev/null 2>&1; then
    wget -O "$archive" "$URL" ||
      die "download failed (no network? then use --from PATH with a copy you have)"
  else
    die "neither curl nor wget found (Debian: apt-get install curl), or use --from PATH"
  fi
  extract_tarball "$archive"
  rm -f "$archive"
fi

problems="$(bad_files "$tmp/cifar-10-batches-bin")"
[[ -z "$problems" ]] || die "the result is incomplete, nothing was installed:"$'\n'"$problems"

if [[ -e "$out" ]]; then
  # An earlier copy that is incomplete (checked above): keep it aside rather than delete it.
  old="$out.incomplete.$(date +%Y%m%d-%H%M%S)"
  mv "$out" "$old" || die "cannot move the incomplete $out aside"
  echo "get_cifar10: moved the incomplete $out to $old (delete it when you no longer need it)"
fi
mv "$tmp/cifar-10-batches-bin" "$out" || die "cannot move the data into $out"
echo "get_cifar10: CIFAR-10 is in $out"
if [[ "$dest" != "$default_dest" ]]; then
  echo "get_cifar10: this is not the default folder: run with --data $dest or CIFAR10_DIR=$dest"
fi
