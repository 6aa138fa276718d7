#!/usr/bin/env bash
# Builds the DaemonSet's image (deploy/base/daemonset.yaml) as an OCI image
# archive, with no registry pulls: one layer holding only the statically
# linked bpf-ratelimit binary at /usr/local/bin/bpf-ratelimit. The binary is
# copied onto every node, whatever its libc, so a dynamically linked one is
# refused.
#
#   deploy/build-image.sh OUTPUT.tar [IMAGE_NAME] [BINARY]
#       IMAGE_NAME  default bpf-ratelimit.local/bpf-ratelimit:<crate version>, as in deploy/base/daemonset.yaml
#       BINARY      default target/<triple>/release/bpf-ratelimit (cargo build --release first;
#                   .cargo/config.toml names the triple and links statically)
#
# Import it on a node with: ctr -n k8s.io images import OUTPUT.tar
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: build-image.sh OUTPUT.tar [IMAGE_NAME] [BINARY]}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)"
name="${2:-bpf-ratelimit.local/bpf-ratelimit:$version}"
triple="$(sed -n 's/^target = "\(.*\)"/\1/p' "$repo/.cargo/config.toml")"
binary="${3:-$repo/target/$triple/release/bpf-ratelimit}"
tag="${name##*:}"
[ "$tag" != "$name" ] || { echo "build-image.sh: IMAGE_NAME needs a tag (name:tag)" >&2; exit 2; }
[ -x "$binary" ] || { echo "build-image.sh: $binary is missing: run cargo build --release first" >&2; exit 1; }
for tool in readelf tar sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: $tool is missing" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
layout="$work/layout"
mkdir -p "$root/usr/local/bin" "$layout/blobs/sha256"
# Static: no program interpreter (PT_INTERP) and no shared library (DT_NEEDED).
program_headers="$(readelf -lW "$binary")"
dynamic_section="$(readelf -dW "$binary")"
if grep -q 'INTERP' <<<"$program_headers" || grep -q '(NEEDED)' <<<"$dynamic_section"; then
  echo "build-image.sh: $binary is dynamically linked; build it with cargo build --release (.cargo/config.toml links it statically)" >&2
  exit 1
fi
install -m 0755 "$binary" "$root/usr/local/bin/bpf-ratelimit"

# Moves a file into the blob store; prints "<digest> <size>".
blob() {
  local hex size
  hex="$(sha256sum "$1" | cut -d' ' -f1)"
  size="$(stat -c %s "$1")"
  mv "$1" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$root" -cf "$work/layer.tar" .
read -r layer_digest layer_size < <(blob "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/usr/local/bin/bpf-ratelimit"],"Cmd":["install","--wait"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
  "$layer_digest" > "$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" "$tag" > "$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
tar -C "$layout" -cf "$out" .
echo "build-image.sh: wrote $name to $out" >&2
