#!/bin/sh
# Render alerts/alertmanager.yml with the webhook URL from ALERTMANAGER_WEBHOOK_URL, then exec
# the command given as arguments (Alertmanager itself in the compose file).
#
# Alertmanager does not expand environment variables in its configuration, so the URL is
# substituted here: the one line of alerts/alertmanager.yml that holds DEFAULT_URL below gets
# the configured URL instead. The file must hold that default exactly once (the stack tests
# check it), so a renamed or duplicated receiver fails loudly instead of alerting nowhere.
#
# Environment:
#   ALERTMANAGER_WEBHOOK_URL         http(s) URL to POST alerts to (default: DEFAULT_URL)
#   ALERTMANAGER_CONFIG_SOURCE       template (default: the mounted alerts/alertmanager.yml)
#   ALERTMANAGER_CONFIG_RENDERED     output (default: /alertmanager/alertmanager.yml)
set -eu

DEFAULT_URL='http://host.docker.internal:9099/alerts'
src="${ALERTMANAGER_CONFIG_SOURCE:-/etc/agent-runtime/alerts/alertmanager.yml}"
out="${ALERTMANAGER_CONFIG_RENDERED:-/alertmanager/alertmanager.yml}"
url="${ALERTMANAGER_WEBHOOK_URL:-$DEFAULT_URL}"

case "$url" in
  *[\ \"\'\	]*)
    echo "render-config: ALERTMANAGER_WEBHOOK_URL must not contain spaces or quotes (got: $url)" >&2
    exit 64 ;;
  http://?*|https://?*) ;;
  *)
    echo "render-config: ALERTMANAGER_WEBHOOK_URL must be an http:// or https:// URL (got: $url); set it in stack/.env" >&2
    exit 64 ;;
esac

if [ ! -r "$src" ]; then
  echo "render-config: cannot read the Alertmanager template $src; is alerts/ mounted?" >&2
  exit 66
fi

# awk's -v would interpret backslashes in the URL; ENVIRON passes it through untouched.
RENDER_URL="$url" awk -v default_url="$DEFAULT_URL" '
  {
    i = index($0, default_url)
    if (i > 0) {
      $0 = substr($0, 1, i - 1) ENVIRON["RENDER_URL"] substr($0, i + length(default_url))
      found++
    }
    print
  }
  END { if (found != 1) exit 65 }
' "$src" > "$out.tmp" || {
  rm -f "$out.tmp"
  echo "render-config: $src must contain the default webhook URL $DEFAULT_URL exactly once" >&2
  exit 65
}
mv "$out.tmp" "$out"
exec "$@"
