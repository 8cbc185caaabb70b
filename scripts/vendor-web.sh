#!/usr/bin/env bash
# Vendor the web page's browser libraries into src/modelfusion/server/static/vendor/.
#
# The page loads nothing from elsewhere (its CSP is default-src 'self') and users run no
# build step, so the minified dist files of a few well-kept npm packages are committed,
# with their licence files. Versions: scripts/web-vendor/package.json (exact), every
# tarball pinned by package-lock.json's integrity hashes (`npm ci` checks them).
# To update: change a version there, `npm install --package-lock-only` in that folder,
# run this script, run tests/test_web*.py, commit the lock and static/vendor together.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=src/modelfusion/server/static/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cp scripts/web-vendor/package.json scripts/web-vendor/package-lock.json "$tmp/"
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
nm="$tmp/node_modules"

rm -rf "$DEST"
mkdir -p "$DEST/licenses"
cp "$nm/markdown-it/dist/browser/markdown-it.umd.min.js" "$DEST/markdown-it.min.js"
cp "$nm/@highlightjs/cdn-assets/highlight.min.js" "$DEST/highlight.min.js"
cp "$nm/@highlightjs/cdn-assets/styles/github.min.css" "$DEST/hljs-light.min.css"
cp "$nm/@highlightjs/cdn-assets/styles/github-dark.min.css" "$DEST/hljs-dark.min.css"
cp "$nm/diff/dist/diff.min.js" "$DEST/diff.min.js"
# markdown-it's browser bundle includes these of its dependencies (argparse is its CLI's).
for pkg in markdown-it entities linkify-it mdurl punycode.js uc.micro @highlightjs/cdn-assets diff; do
  lic=$(find "$nm/$pkg" -maxdepth 1 -iname 'LICEN[CS]E*' | head -n 1)
  [[ -n $lic ]] || { echo "no licence file in $pkg" >&2; exit 1; }
  name=${pkg#@}
  cp "$lic" "$DEST/licenses/${name//\//-}.LICENSE"
done

# What is here and where it came from; tests/test_web_vendor.py checks the hashes.
{
  echo "# Written by scripts/vendor-web.sh; do not edit. package@version, then sha256 per file."
  for pkg in markdown-it @highlightjs/cdn-assets diff entities linkify-it mdurl punycode.js uc.micro; do
    node -p "const p = require('$nm/$pkg/package.json'); p.name + '@' + p.version + ' ' + p.license"
  done
  echo
  (cd "$DEST" && find . -type f ! -name MANIFEST -printf '%P\n' | LC_ALL=C sort | xargs sha256sum)
} > "$DEST/MANIFEST"
echo "vendored into $DEST:"
cat "$DEST/MANIFEST"
