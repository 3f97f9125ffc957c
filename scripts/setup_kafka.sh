#!/usr/bin/env bash
# Fetch Apache Kafka (broker + KRaft controller) as jars from Maven Central, idempotently, into a cache outside
# the repo: ${DFG_KAFKA_HOME:-~/.cache/dfguard/kafka-<version>}/libs. devtools/kafka_broker.py starts it from there.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${DFG_KAFKA_VERSION:-4.1.1}
HOME_DIR=${DFG_KAFKA_HOME:-$HOME/.cache/dfguard/kafka-$VERSION}
LIBS=$HOME_DIR/libs

if [ -f "$HOME_DIR/.complete" ]; then
  echo "setup_kafka: ready ($LIBS, $(ls "$LIBS" | wc -l) jars)"
  exit 0
fi

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if ((${#need[@]})); then
  echo "setup_kafka: installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

mkdir -p "$HOME_DIR"
cat > "$HOME_DIR/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dfguard</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
echo "setup_kafka: fetching Apache Kafka $VERSION jars from Maven Central"
rm -rf "$LIBS"
mvn -q -B -f "$HOME_DIR/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIBS" -DincludeScope=runtime
touch "$HOME_DIR/.complete"
echo "setup_kafka: ready ($LIBS, $(ls "$LIBS" | wc -l) jars)"
