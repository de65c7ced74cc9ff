# A stand-in for prom/alertmanager, from Debian's prometheus-alertmanager (0.25): the same
# entrypoint contract (arguments are alertmanager flags), user nobody, data in
# /alertmanager, amtool on PATH. Built by deploy/local-images.sh on the local Debian base.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus-alertmanager \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup -m 0755 /alertmanager
WORKDIR /alertmanager
USER nobody
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
