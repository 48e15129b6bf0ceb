plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.otaro.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.otaro.demo"
        minSdk = 26 // java.util.Base64
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }
    buildTypes {
        release { isMinifyEnabled = false }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    // Extract an optional app/src/main/jniLibs/<abi>/libotaro_sefp_onnxruntime.so to nativeLibraryDir,
    // where onnxruntime's registerCustomOpLibrary can open it by path.
    packaging { jniLibs { useLegacyPackaging = true } }
}

dependencies {
    // Stock onnxruntime: the artifact's SEFPLinear nodes carry a standard-ops function body,
    // so no custom-op library is needed. Keep this at (or above) the onnxruntime version the
    // bundle was tested with: demo_bundle.json records it as "onnxruntime_version".
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.22.0")
}
