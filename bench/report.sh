# Sourced by bench/run.sh after the runs: prints the results table (markdown) from the
# KEY VALUE lines in $RES. Every figure is a median over the rounds; every ratio is ours
# over theirs, measured in the same run on the same machine.

r2() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.2f", a / b }'; }
f0() { awk -v a="$1" 'BEGIN { if (a == "nan") print "n/a"; else printf "%.0f", a }'; }
f1() { awk -v a="$1" 'BEGIN { if (a == "nan") print "n/a"; else printf "%.1f", a }'; }
f2() { awk -v a="$1" 'BEGIN { if (a == "nan") print "n/a"; else printf "%.2f", a }'; }
mib() { awk -v a="$1" 'BEGIN { if (a == "nan") print "n/a"; else printf "%.1f", a / 1024 }'; }
sum_err() { awk -v k="$1" '$1 == k {s += $2} END {print s + 0}' "$RES"; }

# row LABEL KEY_OURS KEY_THEIRS NOTE: requests/s, p50, p99, errors, server CPU per request.
row() {
    local o=$2 t=$3
    printf '| %s | %s | %s | **%s** | %s / %s | %s / %s | %s / %s | %s / %s | %s |\n' "$1" \
        "$(f0 "$(med "$o.rate")")" "$(f0 "$(med "$t.rate")")" "$(r2 "$(med "$o.rate")" "$(med "$t.rate")")" \
        "$(f2 "$(med "$o.p50")")" "$(f2 "$(med "$t.p50")")" "$(f2 "$(med "$o.p99")")" "$(f2 "$(med "$t.p99")")" \
        "$(sum_err "$o.err")" "$(sum_err "$t.err")" "$(f0 "$(med "$o.cpu")")" "$(f0 "$(med "$t.cpu")")" "$4"
}

echo
echo "## Results ($RUNS rounds of ${SECS} s each, alternating, medians; $CONC connections; $(nproc) cores)"
echo
echo "| comparison | ours /s | theirs /s | ours ÷ theirs | p50 ms (ours / theirs) | p99 ms | errors | server CPU µs per request | notes |"
echo "|---|---|---|---|---|---|---|---|---|"
row "1. keep-alive mTLS GET: hello-world vs nginx" ka.ours ka.nginx "oha, same client certificate and CA"
row "2a. full mTLS handshake per request vs nginx" fh.ours fh.nginx "bench-driver, client resumption off; nginx session cache and tickets off"
printf '| 2b. openssl s_time -new, one connection at a time | %s | %s | **%s** | | | | | full handshakes, sequential |\n' \
    "$(f0 "$(med st.ours.rate)")" "$(f0 "$(med st.nginx.rate)")" "$(r2 "$(med st.ours.rate)" "$(med st.nginx.rate)")"
row "2c. oha --disable-keepalive vs nginx, resumption off in both" dk.ours dk.nginx "a new connection and a full handshake per request"
row "2d. oha --disable-keepalive vs nginx, resumption on in both" dr.ours dr.nginx "a new connection per request, sessions resumed (TLS 1.3 tickets)"
row "3a. renewal, a new mTLS connection each: crank renew (new key each) vs cfssl sign" sg.ours sg.cfssl "ours also: the certificate checked against the ledger and retired, policy, the new row committed (fsync), the CRL in the answer"
row "3b. signing with a fresh join token per request vs cfssl sign" tk.ours tk.cfssl "ours also: ES256 token verified and marked used, policy, ledger row committed"
echo
echo "### Worker cold start and memory"
echo
echo "| measurement | ours | nginx | ratio | target |"
echo "|---|---|---|---|---|"
echo "| cold start: process start to first mTLS 200 (key, CSR, issuance, write, serve), median / p90 | $(f1 "$(med cold.first.median)") / $(f1 "$(med cold.first.p90)") ms | | | <= 100 ms |"
echo "| restart with the certificate on disk, median | $(f1 "$(med cold.restart.median)") ms | | | |"
nw=$(med mem.nginx_worker_count)
echo "| idle RSS: hello-world vs nginx's $(f0 "$nw") worker processes (master $(mib "$(med mem.idle.nginx_master)") MiB more) | $(mib "$(med mem.idle.ours)") MiB | $(mib "$(med mem.idle.nginx_workers)") MiB | **$(r2 "$(med mem.idle.ours)" "$(med mem.idle.nginx_workers)")** | <= 2.00 |"
for n in 10 1000; do
    echo "| RSS holding $n open mTLS connections | $(mib "$(med "mem.conn$n.ours")") MiB | $(mib "$(med "mem.conn$n.nginx_workers")") MiB | $(r2 "$(med "mem.conn$n.ours")" "$(med "mem.conn$n.nginx_workers")") | |"
done
echo
echo "### Scale: renewal throughput against the ledger's size (embedded store)"
echo
echo "| ledger rows | renewals/s | vs. empty ledger |"
echo "|---|---|---|"
for n in "${SCALE_SIZES[@]}"; do
    echo "| $(f0 "$(med "scale.$n.rows")") | $(f0 "$(med "scale.$n.rate")") | $(r2 "$(med "scale.$n.rate")" "$(med scale.0.rate)") |"
done
echo
echo "### The machine's limit (openssl speed ecdsap256, one core)"
echo
sign=$(med speed.sign)
verify=$(med speed.verify)
# A full mTLS handshake costs the server one signature and two verifications (the
# client's certificate and its CertificateVerify); on every core of the machine.
ceiling=$(awk -v s="$sign" -v v="$verify" -v c="$(nproc)" 'BEGIN { if (s == "nan" || v == "nan") print "nan"; else print c / (1 / s + 2 / v) }')
echo "| | per second | ours as a share of it |"
echo "|---|---|---|"
echo "| ECDSA P-256 signatures (one core) | $(f0 "$sign") | |"
echo "| ECDSA P-256 verifications (one core) | $(f0 "$verify") | |"
echo "| handshake ceiling: $(nproc) cores / (1 sign + 2 verify), server side only | $(f0 "$ceiling") | full handshakes (2a): $(r2 "$(med fh.ours.rate)" "$ceiling") |"
echo "| signing ceiling: $(nproc) cores / (1 sign + 1 verify for the CSR) | $(f0 "$(awk -v s="$sign" -v v="$verify" -v c="$(nproc)" 'BEGIN { print c / (1 / s + 1 / v) }')") | renewals (3a): $(r2 "$(med sg.ours.rate)" "$(awk -v s="$sign" -v v="$verify" -v c="$(nproc)" 'BEGIN { print c / (1 / s + 1 / v) }')") |"
echo
echo "The client (oha or bench-driver) runs on the same cores, so no server reaches these"
echo "ceilings; the ratios between servers are the figures to compare."
if [[ -s $WORK/decisions.txt ]]; then
    echo
    echo "### Policy decision latency per engine (criterion, median)"
    echo
    echo '```text'
    # criterion prints `name  time: [low median high]`, the name alone on the line
    # before when it is long.
    awk '/^[A-Za-z0-9_]+\// { name = $1 }
         /time:/ { match($0, /\[.*\]/); split(substr($0, RSTART + 1, RLENGTH - 2), v, " "); printf "%-55s %s %s\n", name, v[3], v[4] }' \
        "$WORK/decisions.txt"
    echo '```'
fi
