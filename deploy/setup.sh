#!/bin/sh
# One-shot set-up for docker-compose: keystores from anvil's well-known dev keys (never use them on a real
# chain), the staking contract deployed by the validator key, and 1 ETH staked by each worker key.
set -eu
: "${STAGEWISE_KEYSTORE_PASSWORD:?set STAGEWISE_KEYSTORE_PASSWORD}"
export STAGEWISE_RPC_URL="${STAGEWISE_RPC_URL:-http://anvil:8545}"
keys=/data/keys
mkdir -p "$keys"
import_key() {  # name hex-key
    [ -f "$keys/$1.json" ] && return 0
    printf '%s' "$2" > /tmp/key && stagewise wallet import --private-key-file /tmp/key --keystore "$keys/$1.json" --scrypt-n 16384
    rm -f /tmp/key
}
import_key validator 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
import_key worker-1 0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
import_key worker-2 0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a
import_key worker-3 0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6
if [ ! -f /data/chain.json ]; then
    stagewise chain deploy --keystore "$keys/validator.json"
fi
for worker in worker-1 worker-2 worker-3; do
    stagewise stake 1 --keystore "$keys/$worker.json" || true   # already staked on a re-run
done
