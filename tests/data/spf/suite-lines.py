#!/usr/bin/env python3
"""Turn the RFC 7208 test suite (rfc7208-tests.yml) into lines tests/spf.rs reads without a
YAML parser: one record or test a line, fields separated by tabs, strings as UTF-8 hex.

  scenario
  zone NAME TYPE VALUE      TXT and SPF: the strings, each hex, joined by ","; MX: PREF,HOST
  zone NAME TIMEOUT         every query for NAME times out (unless a record of its type came first)
  test ID IP MAILFROM HELO RESULT[,RESULT] EXPLANATION   (EXPLANATION "-" when the test has none)
"""
import sys
import yaml


def h(text):
    return str(text).encode("utf-8").hex()


def main():
    with open(sys.argv[1], "rb") as f:
        for scenario in yaml.safe_load_all(f):
            print("scenario")
            for name, records in scenario["zonedata"].items():
                for record in records:
                    if not isinstance(record, dict):
                        print("zone\t%s\tTIMEOUT" % h(name))
                        continue
                    for rtype, value in record.items():
                        if value == "TIMEOUT":
                            print("zone\t%s\t%s\tTIMEOUT" % (h(name), rtype))
                        elif rtype in ("TXT", "SPF"):
                            strings = [value] if isinstance(value, str) else value
                            print("zone\t%s\t%s\t%s" % (h(name), rtype, ",".join(h(s) for s in strings)))
                        elif rtype == "MX":
                            print("zone\t%s\tMX\t%d,%s" % (h(name), value[0], h(value[1])))
                        else:
                            print("zone\t%s\t%s\t%s" % (h(name), rtype, h(value)))
            for test_id, test in scenario["tests"].items():
                results = test["result"]
                results = [results] if isinstance(results, str) else results
                explanation = h(test["explanation"]) if "explanation" in test else "-"
                print("test\t%s\t%s\t%s\t%s\t%s\t%s" % (test_id, test["host"], h(test["mailfrom"]),
                                                        h(test["helo"]), ",".join(results), explanation))


main()
