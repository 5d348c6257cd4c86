#!/bin/sh
# Renders alertmanager.yml with the webhook URLs from the environment, then
# runs the given command (the compose file passes /bin/alertmanager ...).
#
#   ALERT_WEBHOOK_URL           every alert (severity critical, warning, info)
#   ALERT_CRITICAL_WEBHOOK_URL  critical alerts; defaults to ALERT_WEBHOOK_URL
#   ALERTMANAGER_TEMPLATE       input  (default /etc/alertmanager/alertmanager.yml)
#   ALERTMANAGER_CONFIG         output (default /tmp/alertmanager.yml)
#
# The replacement is literal (awk index/substr, not sed), so URLs with `&`,
# `|` or `/` in their query strings survive. POSIX sh + awk: runs on the
# busybox-based prom/alertmanager image and on the test machine alike.
set -eu

template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
config=${ALERTMANAGER_CONFIG:-/tmp/alertmanager.yml}
ALERT_WEBHOOK_URL=${ALERT_WEBHOOK_URL:-}
ALERT_CRITICAL_WEBHOOK_URL=${ALERT_CRITICAL_WEBHOOK_URL:-$ALERT_WEBHOOK_URL}
export ALERT_WEBHOOK_URL ALERT_CRITICAL_WEBHOOK_URL

for name in ALERT_WEBHOOK_URL ALERT_CRITICAL_WEBHOOK_URL; do
    eval "value=\${$name}"
    case $value in
        '') echo "entrypoint: $name is not set: alerts are shown in the Alertmanager UI only" >&2 ;;
        http://*|https://*) ;;
        *) echo "entrypoint: $name must be an http(s):// URL, got: $value" >&2; exit 64 ;;
    esac
done

awk '
    # Replace "http://alert-webhook.invalid/NAME" with the value of $NAME
    # (left alone when NAME is unset). Single quotes are doubled because the
    # URL sits in a single-quoted YAML string.
    function render(line, name,    marker, url, out, i) {
        marker = "http://alert-webhook.invalid/" name
        url = ENVIRON[name]
        if (url == "") return line
        gsub(/\047/, "\047\047", url)
        out = ""
        while ((i = index(line, marker)) > 0) {
            out = out substr(line, 1, i - 1) url
            line = substr(line, i + length(marker))
        }
        return out line
    }
    { print render(render($0, "ALERT_CRITICAL_WEBHOOK_URL"), "ALERT_WEBHOOK_URL") }
' "$template" > "$config"

exec "$@"
