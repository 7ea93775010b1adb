#!/bin/sh
# Managed by Salt (jupyter formula): local changes are overwritten.
#
# certbot's deploy hook for a certificate the formula obtained (the renew_hook of its
# lineage; certbot sets RENEWED_LINEAGE): put the new certificate and key where the
# nginx site reads them, test nginx's whole configuration, and reload nginx. Reload,
# never restart: open websockets survive. When nginx rejects the configuration the
# previous files are put back, nginx keeps serving them, and the hook fails.
#
# usage: jupyter-acme-deploy-hook CERTIFICATE KEY [SERVICE]
set -eu
umask 077   # the key is never readable by others, not even while it is copied

lineage=${RENEWED_LINEAGE:?"RENEWED_LINEAGE is not set (certbot runs this hook)"}
cert=$1
key=$2
service=${3:-nginx}
tag=".jupyter-acme.$$"

cleanup() { rm -f "$cert$tag.new" "$key$tag.new" "$cert$tag.old" "$key$tag.old"; }
trap cleanup EXIT

for dir in "$(dirname "$cert")" "$(dirname "$key")"; do
    [ -d "$dir" ] || mkdir -p -m 0755 "$dir"
done
cp "$lineage/fullchain.pem" "$cert$tag.new"
chmod 0644 "$cert$tag.new"
cp "$lineage/privkey.pem" "$key$tag.new"
chmod 0600 "$key$tag.new"
# keep the files nginx serves now, to put back if nginx rejects the new ones
[ ! -e "$cert" ] || cp -p "$cert" "$cert$tag.old"
[ ! -e "$key" ] || cp -p "$key" "$key$tag.old"
mv -f "$cert$tag.new" "$cert"
mv -f "$key$tag.new" "$key"

if ! out=$(nginx -t 2>&1); then
    if [ -e "$cert$tag.old" ]; then mv -f "$cert$tag.old" "$cert"; else rm -f "$cert"; fi
    if [ -e "$key$tag.old" ]; then mv -f "$key$tag.old" "$key"; else rm -f "$key"; fi
    echo "nginx -t failed with the new certificate; the previous files were put back and nginx keeps serving them:" >&2
    echo "$out" >&2
    exit 1
fi

if [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$service"; then
        systemctl reload "$service"
    fi
elif command -v service >/dev/null 2>&1; then
    if service "$service" status >/dev/null 2>&1; then
        service "$service" reload >/dev/null
    fi
elif [ -s /run/nginx.pid ]; then
    nginx -s reload
fi
echo "deployed $lineage to $cert and $key; nginx -t passes; $service reloaded"
