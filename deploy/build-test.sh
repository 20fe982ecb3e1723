#!/usr/bin/env bash
# The pipeline's test step, run by cloudbuild.yaml in a python:3.12 image (the function's
# runtime version). It adds what the suite needs beyond Python: make, Java, and Google's
# Firestore emulator from Google's apt repository, installed at the path the tests look for.
# REQUIRE_FIRESTORE_EMULATOR=1 turns the suite's "emulator missing: skip" into a failure,
# so the Firestore tests cannot be skipped silently in the build.
# The Cloud SDK release is pinned (EMULATOR_SDK_VERSION, from deploy/config.env through
# cloudbuild-test.yaml): from SDK 529 on the emulator needs Java 21, and this Debian 12
# image has Java 17; 528 with Java 17 is what the suite was run with.
# This runs as the tester account, which can change nothing: the packages installed here
# (apt, and `make test`'s hashed lock) never run with deploy rights.
set -euo pipefail

readonly JAR=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl gnupg make >/dev/null
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
  gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg
echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
  >/etc/apt/sources.list.d/google-cloud-sdk.list
# Slim images drop man directories, which the JDK's postinst scripts still write to.
mkdir -p /usr/share/man/man1
apt-get update -qq
: "${EMULATOR_SDK_VERSION:?set EMULATOR_SDK_VERSION (deploy/config.env)}"
apt-get install -y -qq --no-install-recommends \
  "google-cloud-cli=$EMULATOR_SDK_VERSION" "google-cloud-cli-firestore-emulator=$EMULATOR_SDK_VERSION" >/dev/null
[[ -f "$JAR" ]] || { echo "error: Firestore emulator not at $JAR" >&2; exit 1; }
java -version

REQUIRE_FIRESTORE_EMULATOR=1 make test
