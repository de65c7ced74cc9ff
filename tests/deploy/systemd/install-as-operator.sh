#!/bin/sh
# The install steps of docs/operations.md ("Install on a VPS"), run as root inside the
# systemd container. /src is the repository (read-only); its wheelhouse stands in for the
# index (this machine has no TLS path to it from a container): the same lock, the same
# hashes, `--no-index`. REDIS_PASSWORD is the test's; Redis is Debian's redis-server unit.
set -eu

# 0. the machine's Redis: notifications and a password in its config file (survive restarts)
printf 'notify-keyspace-events KEA\nrequirepass "%s"\n' "$REDIS_PASSWORD" >>/etc/redis/redis.conf
systemctl restart redis-server

# 1. a dedicated user, no login, no home
useradd --system --user-group --no-create-home --shell /usr/sbin/nologin harvest

# 2. the code and its virtualenv at /opt/harvest-async (owned by root: the service only reads)
mkdir -p /opt/harvest-async
tar -C /src --exclude=./.venv --exclude=./.git -c . | tar -C /opt/harvest-async -x
python3 -m venv /opt/harvest-async/.venv
/opt/harvest-async/.venv/bin/pip install --quiet --no-index --find-links /opt/harvest-async/wheelhouse \
    --require-hashes -r /opt/harvest-async/requirements/lock.txt
/opt/harvest-async/.venv/bin/pip install --quiet --no-index --no-deps \
    /opt/harvest-async/wheelhouse/harvest_async-*.whl
/opt/harvest-async/.venv/bin/harvest-async --version

# 3. settings: the example env file
install -d -m 0755 /etc/quantum
install -m 0644 /opt/harvest-async/systemd/harvest-proposal.env.example \
    /etc/quantum/harvest-proposal.env
echo "INSTANCE=systemd-test" >>/etc/quantum/harvest-proposal.env

# 4. the Redis password: a root-only file handed over as a credential
install -m 0600 /dev/null /etc/quantum/redis-password
printf '%s\n' "$REDIS_PASSWORD" >/etc/quantum/redis-password

# 5. the unit, unchanged
install -m 0644 /opt/harvest-async/systemd/harvest-async.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now harvest-async
