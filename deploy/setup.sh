#!/bin/sh
# docker-compose's one-shot set-up, safe to run on every `up`: each step checks what is there and does only
# what is missing, and any failure stops it (and with it the services that wait for it to succeed).
#
#   the validator's keystore   from the secret validator-key (hex), encrypted with validator-password
#   each worker's keystore     a fresh key, in that worker's own data volume, with its own password
#   the staking contract       deployed by the validator's key, unless <data dir>/chain.json names one the
#                              chain still has (anvil restarted without its state: deployed anew)
#   gas and stake              topped up to FUND_ETH / STAKE_ETH, never sent twice
#
# Paths (the defaults are the compose file's mounts): SECRETS (the secret files), STAGEWISE_HOME (the
# validator's data directory: its keystore and chain.json), WORKERS_DIR (one data directory per worker,
# named as in WORKERS). Funding sends from the chain's prefunded dev account: anvil only.
set -eu
secrets="${SECRETS:-/run/secrets}"
workers_dir="${WORKERS_DIR:-/workers}"
workers="${WORKERS:-worker-1 worker-2 worker-3}"
scrypt_n="${SCRYPT_N:-262144}"
: "${STAGEWISE_HOME:?set STAGEWISE_HOME (the validator's data directory)}"
: "${STAGEWISE_RPC_URL:?set STAGEWISE_RPC_URL}"
unset STAGEWISE_KEYSTORE_PASSWORD  # every password comes from its own file

keystore() {  # keystore-path password-file [private-key-file]: create it once, check it opens, print its address
    if [ ! -f "$1" ]; then
        if [ -n "${3:-}" ]; then
            stagewise wallet import --private-key-file "$3" --keystore "$1" --password-file "$2" --scrypt-n "$scrypt_n" >&2
        else
            stagewise wallet new --keystore "$1" --password-file "$2" --scrypt-n "$scrypt_n" >&2
        fi
    fi
    stagewise wallet address --check --keystore "$1" --password-file "$2" >&2  # fails loudly on a wrong password
    stagewise wallet address --keystore "$1"
}

validator_keystore="$STAGEWISE_HOME/keys/validator.json"
validator=$(keystore "$validator_keystore" "$secrets/validator-password" "$secrets/validator-key")
stagewise chain fund "$validator" "${VALIDATOR_FUND_ETH:-10}" --top-up
stagewise chain deploy --keep-existing --keystore "$validator_keystore" --password-file "$secrets/validator-password" \
    --unbonding-delay "${UNBONDING_DELAY:-604800}"

for worker in $workers; do
    worker_keystore="$workers_dir/$worker/keys/worker.json"
    address=$(keystore "$worker_keystore" "$secrets/$worker-password")
    stagewise chain fund "$address" "${FUND_ETH:-2}" --top-up
    stagewise stake "${STAKE_ETH:-1}" --top-up --keystore "$worker_keystore" --password-file "$secrets/$worker-password"
done
echo "set-up complete: validator $validator, contract and stakes in place"
