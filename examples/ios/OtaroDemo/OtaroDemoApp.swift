import SwiftUI

@main
struct OtaroDemoApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
