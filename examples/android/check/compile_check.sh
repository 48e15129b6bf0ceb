#!/bin/sh
# Compile-check the app's platform-independent Kotlin (bundle parsing + engine) WITHOUT the Android SDK:
# kotlinc against stubs of the onnxruntime Java API subset it uses (stubs/, same signatures as
# onnxruntime-android) and Android's org.json (Debian: libandroid-json-java). MainActivity.kt needs
# android.jar and is not checked here. Usage: examples/android/check/compile_check.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../app/src/main/java/dev/otaro/demo"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
json=${ANDROID_JSON_JAR:-/usr/share/java/com.android.json.jar}
javac -d "$out/stubs" "$here"/stubs/ai/onnxruntime/*.java
kotlinc -cp "$out/stubs:$json" -d "$out/app" "$src/DemoBundle.kt" "$src/DemoEngine.kt"
echo "compile check passed: DemoBundle.kt, DemoEngine.kt"
