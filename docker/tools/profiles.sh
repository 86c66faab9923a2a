#!/bin/sh
# The compose profiles' helper services (docker/compose.yaml), one per argument:
#   certs      throwaway demo secrets in /demo: a CA, Pebble's HTTPS certificate, etcd's
#              client certificates, the TSIG key for Knot, the gateways' admin token
#   pebble     Pebble (ACME) on :14000, resolving through Knot
#   knot       Knot, authoritative for demo.test, accepting TSIG-signed updates
#   etcd NAME  one etcd member (TLS for clients, the three members from ETCD_CLUSTER)
# Demo only: the secrets sit in a shared volume, readable by every service of the demo.
set -eu
D=/demo
NET=${DEMO_NET:-172.31.250}

case "${1:-}" in
certs)
  umask 022
  if [ -f "$D/ready" ]; then echo "demo secrets: already made"; exit 0; fi
  cd "$D"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=Gatehouse demo CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
  issue() { # name, subjectAltName
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
      -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$2" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  issue pebble "DNS:pebble,IP:$NET.20,IP:127.0.0.1"
  for n in 1 2 3; do issue "etcd$n" "DNS:etcd$n,IP:$NET.3$n"; done
  issue gateway "DNS:gateway"
  openssl rand -base64 32 > tsig.key
  openssl rand -hex 32 > admin.token
  chmod 0644 ./*.pem tsig.key admin.token
  touch ready
  echo "demo secrets: made in $D"
  ;;
pebble)
  cat > /tmp/pebble.json <<JSON
{"pebble": {"listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
 "certificate": "$D/pebble.pem", "privateKey": "$D/pebble-key.pem",
 "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
  export PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0
  exec pebble -config /tmp/pebble.json -dnsserver "$NET.53:53" -strict=false
  ;;
knot)
  mkdir -p /tmp/knot/zones /tmp/knot/db /tmp/knot/run
  cat > /tmp/knot/zones/demo.test.zone <<ZONE
\$ORIGIN demo.test.
\$TTL 60
@ SOA ns.demo.test. hostmaster.demo.test. 1 3600 600 86400 60
@ NS ns.demo.test.
ns A $NET.53
* A $NET.2
ZONE
  cat > /tmp/knot/knot.conf <<CONF
server:
    rundir: "/tmp/knot/run"
    listen: 0.0.0.0@53
database:
    storage: "/tmp/knot/db"
key:
  - id: gatehouse-update
    algorithm: hmac-sha256
    secret: $(cat "$D/tsig.key")
acl:
  - id: tsig_update
    key: gatehouse-update
    action: update
template:
  - id: default
    storage: "/tmp/knot/zones"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: difference-no-serial
    journal-content: all
zone:
  - domain: demo.test
    acl: [tsig_update]
CONF
  exec knotd -c /tmp/knot/knot.conf
  ;;
etcd)
  name=$2
  ip=$(getent hosts "$name" | awk '{print $1; exit}')
  exec etcd --name "$name" --data-dir "/tmp/$name.etcd" \
    --listen-client-urls https://0.0.0.0:2379 --advertise-client-urls "https://$ip:2379" \
    --cert-file "$D/$name.pem" --key-file "$D/$name-key.pem" \
    --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
    --initial-cluster-token gatehouse-demo
  ;;
*)
  echo "usage: demo-profile certs|pebble|knot|etcd NAME" >&2
  exit 2
  ;;
esac
