# Shared by the check scripts that drive the real kubectl (test-kubectl.sh, test-probes.sh):
# one line per check, and a summary whose exit status says whether any failed.
# Source it: . "$(dirname "$0")/check-lib.sh"
passed=0 failed=0

# expect DESCRIPTION EXIT_CODE REGEX -- COMMAND...: the command exits so and prints a match.
expect() {
  local what=$1 code=$2 pattern=$3; shift 4
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ "$rc" = "$code" ] && grep -Eq -- "$pattern" <<<"$out"; then
    passed=$((passed + 1)); echo "ok   $what"
  else
    failed=$((failed + 1)); echo "FAIL $what (exit $rc, wanted $code and /$pattern/):"; sed 's/^/     /' <<<"$out"
  fi
}

# summary: prints the counts; exits 1 if any check failed.
summary() {
  echo "summary: $passed passed, $failed failed"
  [ "$failed" = 0 ]
}
