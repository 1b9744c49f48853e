;; The crank-security default policy as a module that speaks the OPA Wasm ABI 1.2, the
;; interface of modules built with
;;
;;   opa build -t wasm -e crank/can_issue_certificate -e crank/certificate_validity_period \
;;     -e crank/should_renew_certificate -e crank/revoke_certificate \
;;     -e crank/can_access_capability policies/default
;;
;; Written by hand (WebAssembly text) so the OPA path of the WASM engine can be tested
;; where no `opa` binary is available. It is shaped like an OPA module: it imports
;; `env.memory`, `opa_abort`, `opa_println` and the `opa_builtin0..4` dispatchers, exports
;; the ABI version globals, `opa_malloc`, `opa_json_parse`, `opa_json_dump`, the
;; evaluation-context functions, `eval`, `entrypoints`, `builtins` and the one-shot
;; `opa_eval`, and it asks the host for `sprintf` (which OPA does not compile into Wasm)
;; to word its denials.
;;
;; Inside, a value is `[len: i32][JSON text][NUL]` and its address points at `len`, so
;; `opa_json_dump` is the address of the text. `opa_json_parse` validates and copies
;; the text; policy rules read the input by scanning it. Strings are compared in their
;; JSON-escaped form, which is sound for input written by one serializer (the host).
;; Denial reasons are grouped like the Rego policy's sorted set (DNS, IP, key type) but
;; kept in input order within a group.
;;
;; Static data sits at fixed addresses from 1024 (values with their length prefix), the
;; heap starts at 4096.
(module
  (import "env" "memory" (memory 2))
  (import "env" "opa_abort" (func $opa_abort (param i32)))
  (import "env" "opa_println" (func $opa_println (param i32)))
  (import "env" "opa_builtin0" (func $opa_builtin0 (param i32 i32) (result i32)))
  (import "env" "opa_builtin1" (func $opa_builtin1 (param i32 i32 i32) (result i32)))
  (import "env" "opa_builtin2" (func $opa_builtin2 (param i32 i32 i32 i32) (result i32)))
  (import "env" "opa_builtin3" (func $opa_builtin3 (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "opa_builtin4" (func $opa_builtin4 (param i32 i32 i32 i32 i32 i32) (result i32)))

  (global (export "opa_wasm_abi_version") i32 (i32.const 1))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const 2))
  (global $heap (mut i32) (i32.const 4096))

  (export "memory" (memory 0))

  (data (i32.const 1024) "caller") ;; K_CALLER
  (data (i32.const 1032) "target") ;; K_TARGET
  (data (i32.const 1040) "administrator") ;; K_ADMINISTRATOR
  (data (i32.const 1056) "capability") ;; K_CAPABILITY
  (data (i32.const 1072) "spiffe_id") ;; K_SPIFFE_ID
  (data (i32.const 1088) "platform.register") ;; S_REGISTER
  (data (i32.const 1112) "platform.heartbeat") ;; S_HEARTBEAT
  (data (i32.const 1136) "admin") ;; S_ADMIN
  (data (i32.const 1168) "\0d\00\00\00{\22sprintf\22:0}\00") ;; V_BUILTINS
  (data (i32.const 1192) "\02\00\00\00[]\00") ;; V_UNDEFINED
  (data (i32.const 1200) "\12\00\00\00[{\22result\22:86400}]\00") ;; V_VALIDITY
  (data (i32.const 1224) "\11\00\00\00[{\22result\22:true}]\00") ;; V_REVOKE
  (data (i32.const 1248) "\1b\00\00\00[{\22result\22:{\22allow\22:true}}]\00") ;; V_ALLOW
  (data (i32.const 1280) "\1c\00\00\00\22key type %s is not allowed\22\00") ;; V_FMT_KEY
  (data (i32.const 1320) "\2a\00\00\00\22DNS name %q is not allowed for worker %q\22\00") ;; V_FMT_DNS
  (data (i32.const 1368) "\2c\00\00\00\22IP address %s is not allowed for worker %q\22\00") ;; V_FMT_IP
  (data (i32.const 1424) "worker_id") ;; K_WORKER_ID
  (data (i32.const 1440) "capabilities") ;; K_CAPABILITIES
  (data (i32.const 1456) "requested_dns_sans") ;; K_DNS
  (data (i32.const 1480) "requested_ip_sans") ;; K_IP
  (data (i32.const 1504) "key_type") ;; K_KEY_TYPE
  (data (i32.const 1512) "trust_domain") ;; K_TRUST_DOMAIN
  (data (i32.const 1528) "issued_at") ;; K_ISSUED_AT
  (data (i32.const 1544) "not_after") ;; K_NOT_AFTER
  (data (i32.const 1560) "now") ;; K_NOW
  (data (i32.const 1568) "jitter") ;; K_JITTER
  (data (i32.const 1576) "ecdsa-p256") ;; S_P256
  (data (i32.const 1592) "ecdsa-p384") ;; S_P384
  (data (i32.const 1608) "ed25519") ;; S_ED25519
  (data (i32.const 1616) "rsa-2048") ;; S_RSA2048
  (data (i32.const 1624) "rsa-3072") ;; S_RSA3072
  (data (i32.const 1632) "localhost") ;; S_LOCALHOST
  (data (i32.const 1648) "san:") ;; S_SAN
  (data (i32.const 1656) "127.") ;; S_LOOPBACK4
  (data (i32.const 1664) "::1") ;; S_LOOPBACK6
  (data (i32.const 1672) "true") ;; S_TRUE
  (data (i32.const 1680) "false") ;; S_FALSE
  (data (i32.const 1688) "null") ;; S_NULL
  (data (i32.const 1696) "[{\22result\22:{\22allow\22:false,\22reason\22:\22") ;; S_DENY_HEAD
  (data (i32.const 1736) "\22}}]") ;; S_DENY_TAIL
  (data (i32.const 1744) "; ") ;; S_SEP
  (data (i32.const 1752) "[{\22result\22:{\22renew\22:") ;; S_RENEW_HEAD
  (data (i32.const 1776) ",\22expiring_soon\22:") ;; S_RENEW_MID
  (data (i32.const 1800) "}}]") ;; S_RENEW_TAIL
  (data (i32.const 1808) "internal: illegal entrypoint id\00") ;; M_BAD_ENTRYPOINT
  (data (i32.const 1840) "opa_malloc: out of memory\00") ;; M_OUT_OF_MEMORY
  (data (i32.const 1872) "sprintf returned a value that is not a string\00") ;; M_BAD_BUILTIN
  (data (i32.const 1920) "\a7\00\00\00{\22crank/can_issue_certificate\22:0,\22crank/certificate_validity_period\22:1,\22crank/should_renew_certificate\22:2,\22crank/revoke_certificate\22:3,\22crank/can_access_capability\22:4}\00") ;; V_ENTRYPOINTS
  (data (i32.const 2096) "\29\00\00\00\22caller %s is of trust domain %q, not %q\22\00") ;; V_FMT_DOMAIN
  (data (i32.const 2144) "\89\00\00\00\22caller %s does not hold capability %s; grant it at issuance (`crank token create --capability %s`) or allow it in can_access_capability\22\00") ;; V_FMT_HOLD

  ;; --- heap ------------------------------------------------------------------------

  (func $alloc (export "opa_malloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (call $opa_abort (i32.const 1840)) (unreachable)))
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                      (i32.const 16)))
              (i32.const -1))
          (then (call $opa_abort (i32.const 1840)) (unreachable)))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func (export "opa_free") (param i32))

  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))

  (func (export "opa_heap_ptr_set") (param $p i32) (global.set $heap (local.get $p)))

  ;; --- bytes -----------------------------------------------------------------------

  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; Is the string at s (n bytes) equal to the constant at c (m bytes)?
  (func $is (param $s i32) (param $n i32) (param $c i32) (param $m i32) (result i32)
    (if (result i32) (i32.eq (local.get $n) (local.get $m))
      (then (call $eq (local.get $s) (local.get $c) (local.get $n)))
      (else (i32.const 0))))

  ;; Copies n bytes from src to dst; returns dst + n.
  (func $put (param $dst i32) (param $src i32) (param $n i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $n))
    (i32.add (local.get $dst) (local.get $n)))

  ;; A new value holding n bytes of JSON text, uninitialised; returns its address.
  (func $new_value (param $n i32) (result i32)
    (local $v i32)
    (local.set $v (call $alloc (i32.add (local.get $n) (i32.const 5))))
    (i32.store (local.get $v) (local.get $n))
    (i32.store8 (i32.add (i32.add (local.get $v) (i32.const 4)) (local.get $n)) (i32.const 0))
    (local.get $v))

  ;; --- JSON ------------------------------------------------------------------------

  (func $ws (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $done (i32.eqz (i32.or (i32.or (i32.eq (local.get $c) (i32.const 0x20))
                                              (i32.eq (local.get $c) (i32.const 0x0a)))
                                      (i32.or (i32.eq (local.get $c) (i32.const 0x0d))
                                              (i32.eq (local.get $c) (i32.const 0x09))))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))

  (func $is_digit (param $c i32) (result i32)
    (i32.lt_u (i32.sub (local.get $c) (i32.const 0x30)) (i32.const 10)))

  (func $is_hex (param $c i32) (result i32)
    (i32.or (call $is_digit (local.get $c))
            (i32.lt_u (i32.sub (i32.or (local.get $c) (i32.const 0x20)) (i32.const 0x61)) (i32.const 6))))

  ;; p at an opening quote; returns the position after the closing quote, or -1.
  (func $skip_string (param $p i32) (param $end i32) (result i32)
    (local $c i32) (local $i i32)
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (loop $next
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
      (local.set $c (i32.load8_u (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (if (i32.eq (local.get $c) (i32.const 0x22)) (then (return (local.get $p))))
      (if (i32.lt_u (local.get $c) (i32.const 0x20)) (then (return (i32.const -1))))
      (if (i32.eq (local.get $c) (i32.const 0x5c))
        (then
          (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
          (local.set $c (i32.load8_u (local.get $p)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (if (i32.eq (local.get $c) (i32.const 0x75))
            (then
              (local.set $i (i32.const 0))
              (loop $hex
                (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
                (if (i32.eqz (call $is_hex (i32.load8_u (local.get $p)))) (then (return (i32.const -1))))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $hex (i32.lt_u (local.get $i) (i32.const 4)))))
            (else
              ;; one of " \ / b f n r t
              (if (i32.eqz (i32.or (i32.or (i32.or (i32.eq (local.get $c) (i32.const 0x22))
                                                   (i32.eq (local.get $c) (i32.const 0x5c)))
                                           (i32.or (i32.eq (local.get $c) (i32.const 0x2f))
                                                   (i32.eq (local.get $c) (i32.const 0x62))))
                                   (i32.or (i32.or (i32.eq (local.get $c) (i32.const 0x66))
                                                   (i32.eq (local.get $c) (i32.const 0x6e)))
                                           (i32.or (i32.eq (local.get $c) (i32.const 0x72))
                                                   (i32.eq (local.get $c) (i32.const 0x74))))))
                (then (return (i32.const -1))))))))
      (br $next))
    (i32.const -1))

  ;; Digits from p; returns the position after them, or -1 when there is none.
  (func $skip_digits (param $p i32) (param $end i32) (result i32)
    (local $start i32)
    (local.set $start (local.get $p))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (br_if $done (i32.eqz (call $is_digit (i32.load8_u (local.get $p)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (if (result i32) (i32.eq (local.get $p) (local.get $start))
      (then (i32.const -1))
      (else (local.get $p))))

  (func $skip_number (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2d))
      (then (local.set $p (i32.add (local.get $p) (i32.const 1)))))
    (local.set $p (call $skip_digits (local.get $p) (local.get $end)))
    (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const -1))))
    (if (i32.lt_u (local.get $p) (local.get $end))
      (then
        (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2e))
          (then
            (local.set $p (call $skip_digits (i32.add (local.get $p) (i32.const 1)) (local.get $end)))
            (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const -1))))))))
    (if (i32.lt_u (local.get $p) (local.get $end))
      (then
        (local.set $c (i32.or (i32.load8_u (local.get $p)) (i32.const 0x20)))
        (if (i32.eq (local.get $c) (i32.const 0x65))
          (then
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (if (i32.lt_u (local.get $p) (local.get $end))
              (then
                (local.set $c (i32.load8_u (local.get $p)))
                (if (i32.or (i32.eq (local.get $c) (i32.const 0x2b)) (i32.eq (local.get $c) (i32.const 0x2d)))
                  (then (local.set $p (i32.add (local.get $p) (i32.const 1)))))))
            (local.set $p (call $skip_digits (local.get $p) (local.get $end)))))))
    (local.get $p))

  ;; Does the constant at c (n bytes) start at p, within end?
  (func $at (param $p i32) (param $end i32) (param $c i32) (param $n i32) (result i32)
    (if (result i32) (i32.gt_u (i32.add (local.get $p) (local.get $n)) (local.get $end))
      (then (i32.const 0))
      (else (call $eq (local.get $p) (local.get $c) (local.get $n)))))

  ;; One JSON value from p (leading white space allowed); the position after it, or -1.
  (func $skip_value (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (local.set $p (call $ws (local.get $p) (local.get $end)))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
    (local.set $c (i32.load8_u (local.get $p)))
    (if (i32.eq (local.get $c) (i32.const 0x22))
      (then (return (call $skip_string (local.get $p) (local.get $end)))))
    (if (i32.eq (local.get $c) (i32.const 0x5b))
      (then (return (call $skip_items (local.get $p) (local.get $end) (i32.const 0x5d) (i32.const 0)))))
    (if (i32.eq (local.get $c) (i32.const 0x7b))
      (then (return (call $skip_items (local.get $p) (local.get $end) (i32.const 0x7d) (i32.const 1)))))
    (if (i32.or (i32.eq (local.get $c) (i32.const 0x2d)) (call $is_digit (local.get $c)))
      (then (return (call $skip_number (local.get $p) (local.get $end)))))
    (if (call $at (local.get $p) (local.get $end) (i32.const 1672) (i32.const 4))
      (then (return (i32.add (local.get $p) (i32.const 4)))))
    (if (call $at (local.get $p) (local.get $end) (i32.const 1680) (i32.const 5))
      (then (return (i32.add (local.get $p) (i32.const 5)))))
    (if (call $at (local.get $p) (local.get $end) (i32.const 1688) (i32.const 4))
      (then (return (i32.add (local.get $p) (i32.const 4)))))
    (i32.const -1))

  ;; An array (keyed = 0) or object (keyed = 1) from its opening bracket at p.
  (func $skip_items (param $p i32) (param $end i32) (param $close i32) (param $keyed i32) (result i32)
    (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end)))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
    (if (i32.eq (i32.load8_u (local.get $p)) (local.get $close))
      (then (return (i32.add (local.get $p) (i32.const 1)))))
    (loop $item
      (if (local.get $keyed)
        (then
          (local.set $p (call $ws (local.get $p) (local.get $end)))
          (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
          (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x22)) (then (return (i32.const -1))))
          (local.set $p (call $skip_string (local.get $p) (local.get $end)))
          (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const -1))))
          (local.set $p (call $ws (local.get $p) (local.get $end)))
          (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
          (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x3a)) (then (return (i32.const -1))))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))))
      (local.set $p (call $skip_value (local.get $p) (local.get $end)))
      (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const -1))))
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
      (if (i32.eq (i32.load8_u (local.get $p)) (local.get $close))
        (then (return (i32.add (local.get $p) (i32.const 1)))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x2c)) (then (return (i32.const -1))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $item))
    (i32.const -1))

  (func $json_parse (export "opa_json_parse") (param $s i32) (param $n i32) (result i32)
    (local $end i32) (local $q i32) (local $v i32)
    (local.set $end (i32.add (local.get $s) (local.get $n)))
    (local.set $q (call $skip_value (local.get $s) (local.get $end)))
    (if (i32.lt_s (local.get $q) (i32.const 0)) (then (return (i32.const 0))))
    (if (i32.ne (call $ws (local.get $q) (local.get $end)) (local.get $end)) (then (return (i32.const 0))))
    (local.set $v (call $new_value (local.get $n)))
    (memory.copy (i32.add (local.get $v) (i32.const 4)) (local.get $s) (local.get $n))
    (local.get $v))

  (func (export "opa_value_parse") (param i32 i32) (result i32)
    (call $json_parse (local.get 0) (local.get 1)))

  (func $json_dump (export "opa_json_dump") (param $v i32) (result i32)
    (i32.add (local.get $v) (i32.const 4)))

  (func (export "opa_value_dump") (param $v i32) (result i32)
    (call $json_dump (local.get $v)))

  ;; --- reading the input -----------------------------------------------------------

  ;; The value of key k (n bytes) in the object whose text starts at p; its position
  ;; (white space skipped), or -1 when p is no object or has no such key.
  (func $field (param $p i32) (param $end i32) (param $k i32) (param $n i32) (result i32)
    (local $ks i32) (local $ke i32)
    (local.set $p (call $ws (local.get $p) (local.get $end)))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
    (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x7b)) (then (return (i32.const -1))))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (loop $member
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x22)) (then (return (i32.const -1))))
      (local.set $ks (i32.add (local.get $p) (i32.const 1)))
      (local.set $p (call $skip_string (local.get $p) (local.get $end)))
      (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const -1))))
      (local.set $ke (i32.sub (local.get $p) (i32.const 1)))
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x3a)) (then (return (i32.const -1))))
      (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end)))
      (if (call $is (local.get $ks) (i32.sub (local.get $ke) (local.get $ks)) (local.get $k) (local.get $n))
        (then (return (local.get $p))))
      (local.set $p (call $skip_value (local.get $p) (local.get $end)))
      (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const -1))))
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const -1))))
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2c))
        (then (local.set $p (i32.add (local.get $p) (i32.const 1))) (br $member))))
    (i32.const -1))

  ;; The string at p: (start of its escaped text, length), or (0, -1) when p is no string.
  (func $string (param $p i32) (param $end i32) (result i32 i32)
    (local $q i32)
    (if (i32.or (i32.lt_s (local.get $p) (i32.const 0)) (i32.ge_u (local.get $p) (local.get $end)))
      (then (return (i32.const 0) (i32.const -1))))
    (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x22)) (then (return (i32.const 0) (i32.const -1))))
    (local.set $q (call $skip_string (local.get $p) (local.get $end)))
    (if (i32.lt_s (local.get $q) (i32.const 0)) (then (return (i32.const 0) (i32.const -1))))
    (i32.add (local.get $p) (i32.const 1))
    (i32.sub (i32.sub (local.get $q) (local.get $p)) (i32.const 2)))

  ;; The number at p as f64, and 1; or (0, 0) when p is no number.
  (func $number (param $p i32) (param $end i32) (result f64 i32)
    (local $q i32) (local $c i32) (local $v f64) (local $scale f64) (local $neg i32)
    (local $e i32) (local $eneg i32)
    (if (i32.or (i32.lt_s (local.get $p) (i32.const 0)) (i32.ge_u (local.get $p) (local.get $end)))
      (then (return (f64.const 0) (i32.const 0))))
    (local.set $c (i32.load8_u (local.get $p)))
    (if (i32.eqz (i32.or (i32.eq (local.get $c) (i32.const 0x2d)) (call $is_digit (local.get $c))))
      (then (return (f64.const 0) (i32.const 0))))
    (local.set $q (call $skip_number (local.get $p) (local.get $end)))
    (if (i32.lt_s (local.get $q) (i32.const 0)) (then (return (f64.const 0) (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x2d))
      (then (local.set $neg (i32.const 1)) (local.set $p (i32.add (local.get $p) (i32.const 1)))))
    (local.set $scale (f64.const 1))
    ;; integer digits
    (block $int_done
      (loop $int
        (br_if $int_done (i32.ge_u (local.get $p) (local.get $q)))
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $int_done (i32.eqz (call $is_digit (local.get $c))))
        (local.set $v (f64.add (f64.mul (local.get $v) (f64.const 10))
                               (f64.convert_i32_u (i32.sub (local.get $c) (i32.const 0x30)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $int)))
    ;; fraction
    (if (i32.lt_u (local.get $p) (local.get $q))
      (then
        (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2e))
          (then
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (block $frac_done
              (loop $frac
                (br_if $frac_done (i32.ge_u (local.get $p) (local.get $q)))
                (local.set $c (i32.load8_u (local.get $p)))
                (br_if $frac_done (i32.eqz (call $is_digit (local.get $c))))
                (local.set $v (f64.add (f64.mul (local.get $v) (f64.const 10))
                                       (f64.convert_i32_u (i32.sub (local.get $c) (i32.const 0x30)))))
                (local.set $scale (f64.mul (local.get $scale) (f64.const 10)))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $frac)))))))
    ;; exponent
    (if (i32.lt_u (local.get $p) (local.get $q))
      (then
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $c) (i32.const 0x2d))
          (then (local.set $eneg (i32.const 1)) (local.set $p (i32.add (local.get $p) (i32.const 1))))
          (else (if (i32.eq (local.get $c) (i32.const 0x2b))
                  (then (local.set $p (i32.add (local.get $p) (i32.const 1)))))))
        (block $exp_done
          (loop $exp
            (br_if $exp_done (i32.ge_u (local.get $p) (local.get $q)))
            (local.set $e (i32.add (i32.mul (local.get $e) (i32.const 10))
                                   (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30))))
            ;; beyond any finite double either way
            (if (i32.gt_u (local.get $e) (i32.const 400)) (then (local.set $e (i32.const 400))))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $exp)))
        (block $pow_done
          (loop $pow
            (br_if $pow_done (i32.eqz (local.get $e)))
            (if (local.get $eneg)
              (then (local.set $scale (f64.mul (local.get $scale) (f64.const 10))))
              (else (local.set $v (f64.mul (local.get $v) (f64.const 10)))))
            (local.set $e (i32.sub (local.get $e) (i32.const 1)))
            (br $pow)))))
    (local.set $v (f64.div (local.get $v) (local.get $scale)))
    (if (local.get $neg) (then (local.set $v (f64.neg (local.get $v)))))
    (local.get $v)
    (i32.const 1))

  ;; --- can_issue_certificate ---------------------------------------------------------

  ;; Does a `san:<name>` capability in the array at caps grant the name at s (n bytes)?
  (func $granted (param $caps i32) (param $end i32) (param $s i32) (param $n i32) (result i32)
    (local $p i32) (local $cs i32) (local $cn i32)
    (local.set $p (call $ws (i32.add (local.get $caps) (i32.const 1)) (local.get $end)))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x5d)) (then (return (i32.const 0))))
    (loop $next
      (call $string (local.get $p) (local.get $end))
      (local.set $cn)
      (local.set $cs)
      (if (i32.lt_s (local.get $cn) (i32.const 0)) (then (return (i32.const 0))))
      (if (i32.eq (local.get $cn) (i32.add (local.get $n) (i32.const 4)))
        (then
          (if (i32.and (call $eq (local.get $cs) (i32.const 1648) (i32.const 4))
                       (call $eq (i32.add (local.get $cs) (i32.const 4)) (local.get $s) (local.get $n)))
            (then (return (i32.const 1))))))
      (local.set $p (call $ws (i32.add (i32.add (local.get $cs) (local.get $cn)) (i32.const 1)) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2c))
        (then (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end))) (br $next))))
    (i32.const 0))

  ;; sprintf(fmt, [a, b, c]) through the host, each argument a string given by its escaped
  ;; text (b_n < 0: only a; c_n < 0: no c); the message value.
  (func $sprintf (param $fmt i32) (param $a i32) (param $a_n i32) (param $b i32) (param $b_n i32)
                 (param $c i32) (param $c_n i32) (result i32)
    (local $n i32) (local $args i32) (local $w i32) (local $r i32)
    (local.set $n (i32.add (local.get $a_n) (i32.const 4)))
    (if (i32.ge_s (local.get $b_n) (i32.const 0))
      (then (local.set $n (i32.add (local.get $n) (i32.add (local.get $b_n) (i32.const 3))))))
    (if (i32.and (i32.ge_s (local.get $b_n) (i32.const 0)) (i32.ge_s (local.get $c_n) (i32.const 0)))
      (then (local.set $n (i32.add (local.get $n) (i32.add (local.get $c_n) (i32.const 3))))))
    (local.set $args (call $new_value (local.get $n)))
    (local.set $w (i32.add (local.get $args) (i32.const 4)))
    (i32.store16 (local.get $w) (i32.const 0x225b)) ;; ["
    (local.set $w (call $put (i32.add (local.get $w) (i32.const 2)) (local.get $a) (local.get $a_n)))
    (i32.store8 (local.get $w) (i32.const 0x22))
    (local.set $w (i32.add (local.get $w) (i32.const 1)))
    (if (i32.ge_s (local.get $b_n) (i32.const 0))
      (then
        (i32.store16 (local.get $w) (i32.const 0x222c)) ;; ,"
        (local.set $w (call $put (i32.add (local.get $w) (i32.const 2)) (local.get $b) (local.get $b_n)))
        (i32.store8 (local.get $w) (i32.const 0x22))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (if (i32.ge_s (local.get $c_n) (i32.const 0))
          (then
            (i32.store16 (local.get $w) (i32.const 0x222c)) ;; ,"
            (local.set $w (call $put (i32.add (local.get $w) (i32.const 2)) (local.get $c) (local.get $c_n)))
            (i32.store8 (local.get $w) (i32.const 0x22))
            (local.set $w (i32.add (local.get $w) (i32.const 1)))))))
    (i32.store8 (local.get $w) (i32.const 0x5d))
    (local.set $r (call $opa_builtin2 (i32.const 0) (i32.const 0) (local.get $fmt) (local.get $args)))
    ;; The answer must be a JSON string.
    (if (i32.lt_u (i32.load (local.get $r)) (i32.const 2))
      (then (call $opa_abort (i32.const 1872)) (unreachable)))
    (if (i32.ne (i32.load8_u (i32.add (local.get $r) (i32.const 4))) (i32.const 0x22))
      (then (call $opa_abort (i32.const 1872)) (unreachable)))
    (local.get $r))

  ;; Appends message m to the list whose last node is at tail; returns the new tail.
  (func $push (param $tail i32) (param $m i32) (result i32)
    (local $node i32)
    (local.set $node (call $alloc (i32.const 8)))
    (i32.store (local.get $node) (i32.const 0))
    (i32.store offset=4 (local.get $node) (local.get $m))
    (i32.store (local.get $tail) (local.get $node))
    (local.get $node))

  (func $can_issue (param $in i32) (param $end i32) (result i32)
    (local $wid i32) (local $wid_n i32) (local $td i32) (local $td_n i32) (local $kt i32) (local $kt_n i32)
    (local $caps i32) (local $p i32) (local $s i32) (local $n i32) (local $ok i32)
    (local $head i32) (local $tail i32) (local $len i32) (local $count i32) (local $v i32) (local $w i32)
    (local $m i32) (local $group i32)
    (call $string (call $field (local.get $in) (local.get $end) (i32.const 1424) (i32.const 9)) (local.get $end))
    (local.set $wid_n) (local.set $wid)
    (call $string (call $field (local.get $in) (local.get $end) (i32.const 1512) (i32.const 12)) (local.get $end))
    (local.set $td_n) (local.set $td)
    (call $string (call $field (local.get $in) (local.get $end) (i32.const 1504) (i32.const 8)) (local.get $end))
    (local.set $kt_n) (local.set $kt)
    (if (i32.or (i32.or (i32.lt_s (local.get $wid_n) (i32.const 0)) (i32.lt_s (local.get $td_n) (i32.const 0)))
                (i32.lt_s (local.get $kt_n) (i32.const 0)))
      (then (return (i32.const 0))))
    (local.set $caps (call $field (local.get $in) (local.get $end) (i32.const 1440) (i32.const 12)))
    (if (i32.lt_s (local.get $caps) (i32.const 0)) (then (return (i32.const 0))))
    (if (i32.ne (i32.load8_u (local.get $caps)) (i32.const 0x5b)) (then (return (i32.const 0))))
    (if (i32.lt_s (call $skip_value (local.get $caps) (local.get $end)) (i32.const 0)) (then (return (i32.const 0))))

    ;; The denials, as a list of message values: a head cell, then nodes {next, message}.
    (local.set $head (call $alloc (i32.const 8)))
    (i32.store (local.get $head) (i32.const 0))
    (local.set $tail (local.get $head))

    ;; group 0: DNS names, group 1: IP addresses
    (local.set $group (i32.const 0))
    (loop $groups
      (if (i32.eqz (local.get $group))
        (then (local.set $p (call $field (local.get $in) (local.get $end) (i32.const 1456) (i32.const 18))))
        (else (local.set $p (call $field (local.get $in) (local.get $end) (i32.const 1480) (i32.const 17)))))
      (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const 0))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x5b)) (then (return (i32.const 0))))
      (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x5d))
        (then
          (loop $names
            (call $string (local.get $p) (local.get $end))
            (local.set $n) (local.set $s)
            (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
            (if (i32.eqz (local.get $group))
              (then
                (local.set $ok
                  (i32.or
                    (i32.or (call $is (local.get $s) (local.get $n) (local.get $wid) (local.get $wid_n))
                            (call $is (local.get $s) (local.get $n) (i32.const 1632) (i32.const 9)))
                    (i32.or
                      ;; <worker-id>.<trust-domain>
                      (if (result i32) (i32.eq (local.get $n) (i32.add (i32.add (local.get $wid_n) (local.get $td_n)) (i32.const 1)))
                        (then
                          (i32.and
                            (i32.and (call $eq (local.get $s) (local.get $wid) (local.get $wid_n))
                                     (i32.eq (i32.load8_u (i32.add (local.get $s) (local.get $wid_n))) (i32.const 0x2e)))
                            (call $eq (i32.add (i32.add (local.get $s) (local.get $wid_n)) (i32.const 1)) (local.get $td) (local.get $td_n))))
                        (else (i32.const 0)))
                      (call $granted (local.get $caps) (local.get $end) (local.get $s) (local.get $n)))))
                (if (i32.eqz (local.get $ok))
                  (then
                    (local.set $tail (call $push (local.get $tail)
                      (call $sprintf (i32.const 1320) (local.get $s) (local.get $n) (local.get $wid) (local.get $wid_n)
                                   (i32.const 0) (i32.const -1)))))))
              (else
                (local.set $ok
                  (i32.or
                    (i32.or (call $at (local.get $s) (i32.add (local.get $s) (local.get $n)) (i32.const 1656) (i32.const 4))
                            (call $is (local.get $s) (local.get $n) (i32.const 1664) (i32.const 3)))
                    (call $granted (local.get $caps) (local.get $end) (local.get $s) (local.get $n))))
                (if (i32.eqz (local.get $ok))
                  (then
                    (local.set $tail (call $push (local.get $tail)
                      (call $sprintf (i32.const 1368) (local.get $s) (local.get $n) (local.get $wid) (local.get $wid_n)
                                   (i32.const 0) (i32.const -1))))))))
            (local.set $p (call $ws (i32.add (i32.add (local.get $s) (local.get $n)) (i32.const 1)) (local.get $end)))
            (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
            (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2c))
              (then (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end))) (br $names)))
            (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x5d)) (then (return (i32.const 0)))))))
      (local.set $group (i32.add (local.get $group) (i32.const 1)))
      (br_if $groups (i32.lt_u (local.get $group) (i32.const 2))))

    ;; Key types last: "key type ..." sorts after "DNS ..." and "IP ...".
    (if (i32.eqz
          (i32.or
            (i32.or (call $is (local.get $kt) (local.get $kt_n) (i32.const 1576) (i32.const 10))
                    (call $is (local.get $kt) (local.get $kt_n) (i32.const 1592) (i32.const 10)))
            (i32.or (call $is (local.get $kt) (local.get $kt_n) (i32.const 1608) (i32.const 7))
                    (i32.or (call $is (local.get $kt) (local.get $kt_n) (i32.const 1616) (i32.const 8))
                            (call $is (local.get $kt) (local.get $kt_n) (i32.const 1624) (i32.const 8))))))
      (then
        (local.set $tail (call $push (local.get $tail)
          (call $sprintf (i32.const 1280) (local.get $kt) (local.get $kt_n) (i32.const 0) (i32.const -1)
                         (i32.const 0) (i32.const -1))))))

    (if (i32.eqz (i32.load (local.get $head))) (then (return (i32.const 1248))))

    ;; {"allow": false, "reason": <messages joined by "; ">}
    (local.set $len (i32.add (i32.const 36) (i32.const 4)))
    (local.set $p (i32.load (local.get $head)))
    (loop $measure
      (local.set $len (i32.add (local.get $len) (i32.sub (i32.load (i32.load offset=4 (local.get $p))) (i32.const 2))))
      (local.set $count (i32.add (local.get $count) (i32.const 1)))
      (local.set $p (i32.load (local.get $p)))
      (br_if $measure (local.get $p)))
    (local.set $len (i32.add (local.get $len) (i32.mul (i32.sub (local.get $count) (i32.const 1)) (i32.const 2))))
    (local.set $v (call $new_value (local.get $len)))
    (local.set $w (call $put (i32.add (local.get $v) (i32.const 4)) (i32.const 1696) (i32.const 36)))
    (local.set $p (i32.load (local.get $head)))
    (loop $write
      (local.set $m (i32.load offset=4 (local.get $p)))
      ;; the message's text without its quotes
      (local.set $w (call $put (local.get $w) (i32.add (local.get $m) (i32.const 5)) (i32.sub (i32.load (local.get $m)) (i32.const 2))))
      (local.set $p (i32.load (local.get $p)))
      (if (local.get $p)
        (then (local.set $w (call $put (local.get $w) (i32.const 1744) (i32.const 2))) (br $write))))
    (drop (call $put (local.get $w) (i32.const 1736) (i32.const 4)))
    (local.get $v))

  ;; --- should_renew_certificate --------------------------------------------------------

  (func $renew (param $in i32) (param $end i32) (result i32)
    (local $issued f64) (local $not_after f64) (local $now f64) (local $jitter f64) (local $ok i32)
    (local $lifetime f64) (local $renew i32) (local $soon i32) (local $v i32) (local $w i32)
    (call $number (call $field (local.get $in) (local.get $end) (i32.const 1528) (i32.const 9)) (local.get $end))
    (local.set $ok) (local.set $issued)
    (if (i32.eqz (local.get $ok)) (then (return (i32.const 0))))
    (call $number (call $field (local.get $in) (local.get $end) (i32.const 1544) (i32.const 9)) (local.get $end))
    (local.set $ok) (local.set $not_after)
    (if (i32.eqz (local.get $ok)) (then (return (i32.const 0))))
    (call $number (call $field (local.get $in) (local.get $end) (i32.const 1560) (i32.const 3)) (local.get $end))
    (local.set $ok) (local.set $now)
    (if (i32.eqz (local.get $ok)) (then (return (i32.const 0))))
    (call $number (call $field (local.get $in) (local.get $end) (i32.const 1568) (i32.const 6)) (local.get $end))
    (local.set $ok) (local.set $jitter)
    (if (i32.eqz (local.get $ok)) (then (return (i32.const 0))))
    (local.set $lifetime (f64.sub (local.get $not_after) (local.get $issued)))
    (if (f64.le (local.get $lifetime) (f64.const 0))
      (then (local.set $renew (i32.const 1)) (local.set $soon (i32.const 1)))
      (else
        (local.set $renew
          (f64.ge (f64.sub (local.get $now) (local.get $issued))
                  (f64.add (f64.div (f64.mul (local.get $lifetime) (f64.const 2)) (f64.const 3))
                           (f64.div (f64.mul (local.get $lifetime) (local.get $jitter)) (f64.const 20)))))
        (local.set $soon
          (f64.lt (f64.sub (local.get $not_after) (local.get $now))
                  (f64.div (local.get $lifetime) (f64.const 4))))))
    (local.set $v (call $new_value
      (i32.add (i32.add (i32.const 20) (i32.const 17))
               (i32.add (i32.const 3)
                        (i32.add (i32.sub (i32.const 5) (local.get $renew)) (i32.sub (i32.const 5) (local.get $soon)))))))
    (local.set $w (call $put (i32.add (local.get $v) (i32.const 4)) (i32.const 1752) (i32.const 20)))
    (local.set $w (call $bool (local.get $w) (local.get $renew)))
    (local.set $w (call $put (local.get $w) (i32.const 1776) (i32.const 17)))
    (local.set $w (call $bool (local.get $w) (local.get $soon)))
    (drop (call $put (local.get $w) (i32.const 1800) (i32.const 3)))
    (local.get $v))

  (func $bool (param $w i32) (param $b i32) (result i32)
    (if (result i32) (local.get $b)
      (then (call $put (local.get $w) (i32.const 1672) (i32.const 4)))
      (else (call $put (local.get $w) (i32.const 1680) (i32.const 5)))))

  ;; --- can_access_capability ----------------------------------------------------------

  ;; Does a grant in the array at caps (checked to be one) cover the capability whose
  ;; escaped text is at w (n bytes)? The same name, `admin`, or `<prefix>.*` when the
  ;; capability starts with `<prefix>.`. Escaped texts compare like the strings: the
  ;; escapes are a prefix-free code and `.`, `*` are never part of an escape.
  (func $holds (param $caps i32) (param $end i32) (param $w i32) (param $n i32) (result i32)
    (local $p i32) (local $gs i32) (local $gn i32)
    (local.set $p (call $ws (i32.add (local.get $caps) (i32.const 1)) (local.get $end)))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x5d)) (then (return (i32.const 0))))
    (loop $next
      (call $string (local.get $p) (local.get $end))
      (local.set $gn) (local.set $gs)
      ;; a grant that is no string covers nothing
      (if (i32.ge_s (local.get $gn) (i32.const 0))
        (then
          (if (call $is (local.get $gs) (local.get $gn) (local.get $w) (local.get $n))
            (then (return (i32.const 1))))
          (if (call $is (local.get $gs) (local.get $gn) (i32.const 1136) (i32.const 5))
            (then (return (i32.const 1))))
          (if (i32.ge_u (local.get $gn) (i32.const 2))
            (then
              (if (i32.and
                    (i32.eq (i32.load16_u (i32.sub (i32.add (local.get $gs) (local.get $gn)) (i32.const 2)))
                            (i32.const 0x2a2e)) ;; .*
                    (i32.le_u (i32.sub (local.get $gn) (i32.const 1)) (local.get $n)))
                (then
                  (if (call $eq (local.get $w) (local.get $gs) (i32.sub (local.get $gn) (i32.const 1)))
                    (then (return (i32.const 1))))))))))
      (local.set $p (call $skip_value (local.get $p) (local.get $end)))
      (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const 0))))
      (local.set $p (call $ws (local.get $p) (local.get $end)))
      (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2c))
        (then (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $end))) (br $next))))
    (i32.const 0))

  ;; The result set {"allow": false, "reason": <message m>}.
  (func $deny (param $m i32) (result i32)
    (local $n i32) (local $v i32) (local $w i32)
    ;; the message's text without its quotes
    (local.set $n (i32.sub (i32.load (local.get $m)) (i32.const 2)))
    (local.set $v (call $new_value (i32.add (i32.add (i32.const 36) (local.get $n)) (i32.const 4))))
    (local.set $w (call $put (i32.add (local.get $v) (i32.const 4)) (i32.const 1696) (i32.const 36)))
    (local.set $w (call $put (local.get $w) (i32.add (local.get $m) (i32.const 5)) (local.get $n)))
    (drop (call $put (local.get $w) (i32.const 1736) (i32.const 4)))
    (local.get $v))

  ;; As the Rego default: a caller of another trust domain is refused; a route that names
  ;; no capability is open to the trust domain; administrators, the open capabilities
  ;; and callers granted the capability are allowed; anyone else is refused.
  (func $access (param $in i32) (param $end i32) (result i32)
    (local $caller i32) (local $target i32) (local $sid i32) (local $sid_n i32)
    (local $ctd i32) (local $ctd_n i32) (local $ttd i32) (local $ttd_n i32)
    (local $p i32) (local $w i32) (local $w_n i32)
    (local.set $caller (call $field (local.get $in) (local.get $end) (i32.const 1024) (i32.const 6)))
    (local.set $target (call $field (local.get $in) (local.get $end) (i32.const 1032) (i32.const 6)))
    (call $string (call $field (local.get $caller) (local.get $end) (i32.const 1072) (i32.const 9)) (local.get $end))
    (local.set $sid_n) (local.set $sid)
    (call $string (call $field (local.get $caller) (local.get $end) (i32.const 1512) (i32.const 12)) (local.get $end))
    (local.set $ctd_n) (local.set $ctd)
    (call $string (call $field (local.get $target) (local.get $end) (i32.const 1512) (i32.const 12)) (local.get $end))
    (local.set $ttd_n) (local.set $ttd)
    (if (i32.or (i32.or (i32.lt_s (local.get $sid_n) (i32.const 0)) (i32.lt_s (local.get $ctd_n) (i32.const 0)))
                (i32.lt_s (local.get $ttd_n) (i32.const 0)))
      (then (return (i32.const 0))))
    (if (i32.eqz (call $is (local.get $ctd) (local.get $ctd_n) (local.get $ttd) (local.get $ttd_n)))
      (then
        (return (call $deny
          (call $sprintf (i32.const 2096) (local.get $sid) (local.get $sid_n) (local.get $ctd) (local.get $ctd_n)
                         (local.get $ttd) (local.get $ttd_n))))))
    (local.set $p (call $field (local.get $target) (local.get $end) (i32.const 1056) (i32.const 10)))
    (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const 0))))
    (if (call $at (local.get $p) (local.get $end) (i32.const 1688) (i32.const 4)) ;; null
      (then (return (i32.const 1248))))
    (call $string (local.get $p) (local.get $end))
    (local.set $w_n) (local.set $w)
    (if (i32.lt_s (local.get $w_n) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $p (call $field (local.get $caller) (local.get $end) (i32.const 1040) (i32.const 13)))
    (if (i32.ge_s (local.get $p) (i32.const 0))
      (then
        (if (call $at (local.get $p) (local.get $end) (i32.const 1672) (i32.const 4)) ;; true
          (then (return (i32.const 1248))))))
    (if (i32.or (call $is (local.get $w) (local.get $w_n) (i32.const 1088) (i32.const 17))
                (call $is (local.get $w) (local.get $w_n) (i32.const 1112) (i32.const 18)))
      (then (return (i32.const 1248))))
    (local.set $p (call $field (local.get $caller) (local.get $end) (i32.const 1440) (i32.const 12)))
    (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const 0))))
    (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x5b)) (then (return (i32.const 0))))
    (if (i32.lt_s (call $skip_value (local.get $p) (local.get $end)) (i32.const 0)) (then (return (i32.const 0))))
    (if (call $holds (local.get $p) (local.get $end) (local.get $w) (local.get $w_n))
      (then (return (i32.const 1248))))
    (call $deny
      (call $sprintf (i32.const 2144) (local.get $sid) (local.get $sid_n) (local.get $w) (local.get $w_n)
                     (local.get $w) (local.get $w_n))))

  ;; --- evaluation ------------------------------------------------------------------

  ;; The result set of entrypoint ep for the input value (0: no input).
  (func $decide (param $ep i32) (param $input i32) (result i32)
    (local $in i32) (local $end i32) (local $r i32)
    (if (i32.ge_u (local.get $ep) (i32.const 5))
      (then (call $opa_abort (i32.const 1808)) (unreachable)))
    (if (i32.eq (local.get $ep) (i32.const 1)) (then (return (i32.const 1200))))
    (if (i32.eq (local.get $ep) (i32.const 3)) (then (return (i32.const 1224))))
    (if (i32.eqz (local.get $input)) (then (return (i32.const 1192))))
    (local.set $in (i32.add (local.get $input) (i32.const 4)))
    (local.set $end (i32.add (local.get $in) (i32.load (local.get $input))))
    (if (i32.eqz (local.get $ep))
      (then (local.set $r (call $can_issue (local.get $in) (local.get $end))))
      (else
        (if (i32.eq (local.get $ep) (i32.const 2))
          (then (local.set $r (call $renew (local.get $in) (local.get $end))))
          (else (local.set $r (call $access (local.get $in) (local.get $end)))))))
    (if (result i32) (local.get $r) (then (local.get $r)) (else (i32.const 1192))))

  (func (export "entrypoints") (result i32) (i32.const 1920))

  (func (export "builtins") (result i32) (i32.const 1168))

  ;; context: {input, data, entrypoint, result}
  (func (export "opa_eval_ctx_new") (result i32)
    (local $ctx i32)
    (local.set $ctx (call $alloc (i32.const 16)))
    (memory.fill (local.get $ctx) (i32.const 0) (i32.const 16))
    (local.get $ctx))

  (func (export "opa_eval_ctx_set_input") (param $ctx i32) (param $v i32)
    (i32.store (local.get $ctx) (local.get $v)))

  (func (export "opa_eval_ctx_set_data") (param $ctx i32) (param $v i32)
    (i32.store offset=4 (local.get $ctx) (local.get $v)))

  (func (export "opa_eval_ctx_set_entrypoint") (param $ctx i32) (param $ep i32)
    (i32.store offset=8 (local.get $ctx) (local.get $ep)))

  (func (export "opa_eval_ctx_get_result") (param $ctx i32) (result i32)
    (i32.load offset=12 (local.get $ctx)))

  (func (export "eval") (param $ctx i32) (result i32)
    (i32.store offset=12 (local.get $ctx)
      (call $decide (i32.load offset=8 (local.get $ctx)) (i32.load (local.get $ctx))))
    (i32.const 0))

  ;; ABI 1.2: one call from input text to result text.
  (func (export "opa_eval")
    (param $reserved i32) (param $ep i32) (param $data i32) (param $input i32) (param $input_len i32)
    (param $heap_ptr i32) (param $format i32) (result i32)
    (global.set $heap (local.get $heap_ptr))
    (call $json_dump
      (call $decide (local.get $ep) (call $json_parse (local.get $input) (local.get $input_len)))))
)
