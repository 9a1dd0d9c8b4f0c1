"""Zero-touch onboarding: the one script that points a fresh site at its region's front door.

`distro-sync site-config INVENTORY SITE` prints it and the console serves it at
`/sites/<site>/bootstrap.sh`. Run as root on the site (`curl -fsS URL | sh`), it writes:

- the repository key to `/usr/share/keyrings/edgedepot.gpg`, downloaded from the front door's
  `/keys/repository.gpg` and accepted only if gpg shows exactly one primary key with the
  fingerprint the inventory pins (`repository_key`, else the origin's, read when generating);
- `/etc/apt/sources.list.d/edgedepot.list`: one `deb [signed-by=...]` line per apt repository of
  the site's profile, so apt checks the signatures itself;
- `/etc/pip.conf` (the profile's pip index; `trusted-host` for plain http);
- `/etc/openstack/clouds.yaml` (cloud `edgedepot`: the Glance endpoint of the region, with the
  site's image-service token when `EDGEDEPOT_IMAGE_TOKEN` is set, else anonymous) and
  `/etc/edgedepot/site.env` (the same addresses as shell variables, `OS_IMAGE_URL` included);

then reports to the console (`POST /api/sites/<site>/report` with the onboarding token) so the
site shows up as onboarded, and a site the inventory does not name shows up as unknown.

The script is idempotent: each file is replaced atomically and only when its content changed,
so running it again after the operator moved the region's address re-points the site and
changes nothing else. `EDGEDEPOT_ROOT=/some/dir` writes everything under that prefix instead
of `/` (tests point it at a private apt root); `EDGEDEPOT_SITE` overrides the site name it
reports. A console that cannot be reached is a warning, not a failure: the site is configured.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

from distro.errors import EdgedepotError
from syncer.blocking_http import BlockingHttp
from syncer.inventory import Inventory, InventoryError

KEYRING = "/usr/share/keyrings/edgedepot.gpg"
SOURCES = "/etc/apt/sources.list.d/edgedepot.list"
PIP_CONF = "/etc/pip.conf"
CLOUDS_YAML = "/etc/openstack/clouds.yaml"
SITE_ENV = "/etc/edgedepot/site.env"
CLOUD_NAME = "edgedepot"
_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


class OnboardingError(EdgedepotError):
    """A site's configuration cannot be generated; the message says why."""


@dataclass(frozen=True)
class AptSource:
    repo: str
    suite: str
    components: tuple[str, ...]


@dataclass(frozen=True)
class SiteConfig:
    """Everything the bootstrap script of one site embeds."""

    site: str
    region: str
    profile: str
    front: str  # the region's front door, no trailing slash
    apt: tuple[AptSource, ...]
    pip_index: str | None
    key_fingerprint: str
    console_url: str | None
    token: str | None

    @property
    def image_url(self) -> str:
        return f"{self.front}/glance"


def pinned_fingerprint(inventory: Inventory, http: BlockingHttp | None = None) -> str:
    """The fingerprint sites pin: the inventory's `repository_key`, else what the origin's
    `/keys/` says (read over the scheduler's trusted connection, with the inventory's CA)."""
    if inventory.onboarding.repository_key:
        return inventory.onboarding.repository_key
    url = f"{inventory.origin}/keys/"
    try:
        if http is None:
            with BlockingHttp(inventory.client_settings()) as own:
                body, _ = own.get(url, "application/json")
        else:
            body, _ = http.get(url, "application/json")
        fingerprint = str(json.loads(body)["fingerprint"]).upper()
    except (EdgedepotError, ValueError, KeyError, TypeError) as exc:
        raise OnboardingError(f"cannot read the repository key fingerprint from {url}: {exc} "
                              "(or pin it in the inventory: repository_key)") from None
    if not _FINGERPRINT.match(fingerprint):
        raise OnboardingError(f"{url} answered no key fingerprint")
    return fingerprint


def site_config(inventory: Inventory, site: str, fingerprint: str,
                console_url: str | None = None) -> SiteConfig:
    """The configuration of `site` (`console_url` overrides the inventory's)."""
    if site not in inventory.sites:
        known = ", ".join(sorted(inventory.sites)[:10])
        raise InventoryError(f"no site {site!r} in the inventory (sites: {known}"
                             f"{', ...' if len(inventory.sites) > 10 else ''})")
    s = inventory.sites[site]
    profile = inventory.profiles[s.profile]
    region = inventory.regions[s.region]
    apt = () if profile.apt is None else (
        AptSource(profile.apt.repo, profile.apt.suite, profile.apt.components),)
    return SiteConfig(site, s.region, s.profile, region.front_door.rstrip("/"), apt,
                      profile.pip.index if profile.pip else None, fingerprint,
                      (console_url or inventory.onboarding.console_url or "").rstrip("/")
                      or None, inventory.onboarding.token)


def _q(text: str) -> str:
    return shlex.quote(text)


def render_bootstrap(cfg: SiteConfig) -> str:
    """The bootstrap script (POSIX sh) for one site."""
    host = urlsplit(cfg.front).hostname or ""
    apt_lines = "\n".join(
        f"deb [signed-by=$ROOT{KEYRING}] $FRONT/apt/{a.repo} {a.suite} {' '.join(a.components)}"
        for a in cfg.apt)
    pip = ""
    if cfg.pip_index:
        trusted = f"trusted-host = {host}\n" if cfg.front.startswith("http://") else ""
        pip = f"""
# -- pip ----------------------------------------------------------------------------------
cat > "$TMP/pip.conf" <<EOF
# written by the edgedepot bootstrap of site $SITE; running it again re-points the site
[global]
index-url = $FRONT/pypi/{cfg.pip_index}/simple/
{trusted}EOF
install_file "$TMP/pip.conf" {PIP_CONF} 0644
"""
    apt = ""
    if cfg.apt:
        apt = f"""
# -- apt ----------------------------------------------------------------------------------
cat > "$TMP/sources.list" <<EOF
# written by the edgedepot bootstrap of site $SITE; running it again re-points the site
{apt_lines}
EOF
install_file "$TMP/key.gpg" {KEYRING} 0644
install_file "$TMP/sources.list" {SOURCES} 0644
"""
    return f"""#!/bin/sh
# edgedepot bootstrap for site {cfg.site} (region {cfg.region}, profile {cfg.profile}).
# Points this site's apt, pip and OpenStack image clients at the region's cache: run as root,
#   curl -fsS {cfg.console_url or 'CONSOLE'}/sites/{cfg.site}/bootstrap.sh | sh
# Safe to run again: files change only when their content does (a moved region re-points).
# EDGEDEPOT_ROOT=DIR writes under DIR instead of /; EDGEDEPOT_SITE names the site it reports.
set -eu

SITE="${{EDGEDEPOT_SITE:-{cfg.site}}}"
ROOT="${{EDGEDEPOT_ROOT:-}}"
FRONT={_q(cfg.front)}
KEY_FINGERPRINT={_q(cfg.key_fingerprint)}
CONSOLE={_q(cfg.console_url or "")}
ONBOARDING_TOKEN={_q(cfg.token or "")}

log() {{ printf 'edgedepot-bootstrap: %s\\n' "$*" >&2; }}
die() {{ log "error: $*"; exit 1; }}
case "$SITE" in
    ""|*[!A-Za-z0-9._-]*) die "site name '$SITE': letters, digits and . _ - only" ;;
esac

# fetch URL FILE [POST-BODY-FILE]: curl, wget or python3, whichever the site has
fetch() {{
    if command -v curl >/dev/null 2>&1; then
        if [ $# -ge 3 ]; then
            curl -fsS --retry 2 -o "$2" -H "Content-Type: application/json" \\
                -H "Authorization: Bearer $ONBOARDING_TOKEN" --data-binary "@$3" "$1"
        else
            curl -fsS --retry 2 -o "$2" "$1"
        fi
    elif command -v python3 >/dev/null 2>&1; then
        python3 - "$@" <<'PY'
import os, sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
data, headers = None, {{}}
if len(sys.argv) > 3:
    data = open(sys.argv[3], "rb").read()
    headers = {{"Content-Type": "application/json",
               "Authorization": "Bearer " + os.environ.get("ONBOARDING_TOKEN", "")}}
req = urllib.request.Request(url, data=data, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=60) as resp, open(out, "wb") as f:
        f.write(resp.read())
except Exception as exc:
    sys.exit("%s: %s" % (url, exc))
PY
    elif command -v wget >/dev/null 2>&1 && [ $# -lt 3 ]; then
        wget -q -O "$2" "$1"
    else
        die "cannot download $1: install curl (or wget, or python3)"
    fi
}}

# install_file SOURCE PATH MODE: replace $ROOT/PATH atomically, only when the content changed
install_file() {{
    dest="$ROOT$2"
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && cmp -s "$1" "$dest"; then
        log "unchanged $dest"
        return 0
    fi
    cp "$1" "$dest.edgedepot-new"
    chmod "$3" "$dest.edgedepot-new"
    mv -f "$dest.edgedepot-new" "$dest"
    log "wrote $dest"
}}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export ONBOARDING_TOKEN

# -- the repository key, checked against the pinned fingerprint ---------------------------
command -v gpg >/dev/null 2>&1 || die "gpg is needed to check the repository key (apt-get install gpg)"
fetch "$FRONT/keys/repository.gpg" "$TMP/key.gpg" || die "cannot download $FRONT/keys/repository.gpg"
mkdir -m 700 "$TMP/gnupg"
primary=$(GNUPGHOME="$TMP/gnupg" gpg --batch --quiet --with-colons --show-keys \\
          "$TMP/key.gpg" 2>/dev/null |
          awk -F: '$1 == "pub" {{ want = 1; next }} $1 == "fpr" && want {{ print $10; want = 0 }}')
[ "$primary" = "$KEY_FINGERPRINT" ] || die "the key from $FRONT is not the pinned \\
repository key (want $KEY_FINGERPRINT, got ${{primary:-no key}})"
log "repository key $KEY_FINGERPRINT verified"
{apt}{pip}
# -- OpenStack images ---------------------------------------------------------------------
# With EDGEDEPOT_IMAGE_TOKEN (the site's token for the image service) clients send it;
# without, they ask anonymously (public and community images only).
if [ -n "${{EDGEDEPOT_IMAGE_TOKEN:-}}" ]; then
    auth="admin_token"
    token_line="      token: $EDGEDEPOT_IMAGE_TOKEN"
    mode=0600
else
    auth="none"
    token_line=""
    mode=0644
fi
cat > "$TMP/clouds.yaml" <<EOF
# written by the edgedepot bootstrap of site $SITE; running it again re-points the site
clouds:
  {CLOUD_NAME}:
    auth_type: $auth
    auth:
      endpoint: $FRONT/glance
$token_line
    image_endpoint_override: $FRONT/glance
EOF
install_file "$TMP/clouds.yaml" {CLOUDS_YAML} $mode
cat > "$TMP/site.env" <<EOF
# written by the edgedepot bootstrap of site $SITE
EDGEDEPOT_SITE=$SITE
EDGEDEPOT_FRONT=$FRONT
OS_IMAGE_URL=$FRONT/glance
EOF
install_file "$TMP/site.env" {SITE_ENV} 0644

# -- report to the console -----------------------------------------------------------------
if [ -n "$CONSOLE" ]; then
    addresses=$( (hostname -I 2>/dev/null || true) | tr ' ' '\\n' |
                awk 'NF {{ printf "%s\\"%s\\"", sep, $1; sep = "," }}')
    host=$( (hostname 2>/dev/null || echo unknown) | tr -cd 'A-Za-z0-9._-')
    printf '{{"site": "%s", "hostname": "%s", "front": "%s", "addresses": [%s]}}\\n' \\
        "$SITE" "$host" "$FRONT" "$addresses" > "$TMP/report.json"
    if fetch "$CONSOLE/api/sites/$SITE/report" "$TMP/report.out" "$TMP/report.json"; then
        log "reported to $CONSOLE"
    else
        log "warning: could not report to $CONSOLE (the site is configured all the same)"
    fi
fi
log "site $SITE uses $FRONT"
"""
