# A stand-in for the official redis image, from Debian's redis-server (7.0): same user name
# (redis), same working directory (/data, where --appendonly writes), redis-server and
# redis-cli on PATH. Built by deploy/local-images.sh on the local Debian base.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis -m 0750 /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
